# expect: blocked-at-runtime
sys.SetCustomSIPHeader('Via', 'SIP/2.0/UDP evil')
sys.Log('PWNED Via accepted')
