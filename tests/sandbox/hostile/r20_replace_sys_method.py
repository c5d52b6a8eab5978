# expect: blocked-at-runtime
sys.Dial = lambda s: None
sys.Log('PWNED')
