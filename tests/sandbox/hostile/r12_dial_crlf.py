# expect: blocked-at-runtime
sys.Dial('1@x\r\nX-Injected: 1')
sys.Log('PWNED crlf accepted')
