# expect: bounded-cpu
x = 10 ** 10 ** 8
sys.Log('PWNED %d' % len(str(x)))
