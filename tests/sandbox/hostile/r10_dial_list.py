# expect: blocked-at-runtime
sys.Dial(['1001@provider'])
sys.Log('PWNED list accepted')
