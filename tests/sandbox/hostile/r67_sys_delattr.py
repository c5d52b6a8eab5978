# expect: blocked-at-runtime
del sys.Trace
sys.Log('PWNED')
