# expect: blocked-at-runtime
sys.Trace = 'no'
sys.Log('PWNED')
