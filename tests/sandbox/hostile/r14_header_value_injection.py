# expect: blocked-at-runtime
sys.SetCustomSIPHeader('X-A', 'v\r\nInjected: 1')
sys.Log('PWNED injection accepted')
