# expect: blocked-at-runtime
x = round(123, -10 ** 9)
sys.Log('PWNED %s' % x)
