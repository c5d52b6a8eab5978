# expect: blocked-at-runtime
try:
    cls = getattr(req, '__cl' + 'ass__')
    sys.Log('PWNED %s' % cls)
except Exception:
    pass
