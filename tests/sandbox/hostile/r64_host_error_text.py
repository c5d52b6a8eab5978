# expect: blocked-at-runtime
try:
    sys.Respond('x')
except TypeError as e:
    sys.Log('text %s %r' % (e, e.args))
try:
    sys.Respond(200)
except ValueError as e:
    sys.Log('text %s' % e)
