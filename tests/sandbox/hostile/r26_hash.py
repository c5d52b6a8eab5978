# expect: blocked-at-runtime
sys.Log('PWNED %d' % hash('a'))
