# expect: blocked-at-compile
k = sys.__class__
sys.Log('PWNED %s' % k)
