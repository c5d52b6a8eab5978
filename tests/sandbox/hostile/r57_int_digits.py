# expect: blocked-at-runtime
n = int('9' * 5000)
sys.Log('PWNED %d' % n)
