# expect: blocked-at-compile
f = lambda _getattr_=lambda o, n: 'x', /: req.URI
sys.Log('PWNED %s' % f())
