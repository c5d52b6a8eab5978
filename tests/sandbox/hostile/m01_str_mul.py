# expect: bounded-memory
s = 'a' * 10 ** 10
sys.Log('PWNED %d' % len(s))
