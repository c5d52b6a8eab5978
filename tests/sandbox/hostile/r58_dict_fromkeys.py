# expect: blocked-at-runtime
d = {}.fromkeys(range(10))
sys.Log('PWNED fromkeys')
