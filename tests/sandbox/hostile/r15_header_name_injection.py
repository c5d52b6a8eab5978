# expect: blocked-at-runtime
sys.SetCustomSIPHeader('X-A: b\r\nC', 'v')
sys.Log('PWNED injection accepted')
