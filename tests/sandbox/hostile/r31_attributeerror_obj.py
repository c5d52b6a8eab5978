# expect: blocked-at-runtime
try:
    req.nothing
except AttributeError as e:
    sys.Log('PWNED %s' % e.obj)
