# expect: blocked-at-runtime
try:
    sys.Log('PWNED ' + '{0.URI}'.format(req))
except AttributeError:
    sys.Log('format refused')
