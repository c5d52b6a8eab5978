# expect: blocked-at-runtime
sys.Dial(b'1001@provider')
sys.Log('PWNED bytes accepted')
