# expect: blocked-at-runtime
sys.DBWrite('k', 'v' * 5000)
sys.Log('PWNED long value stored')
