# expect: blocked-at-runtime
try:
    sys.Log('PWNED ' + '{x.URI}'.format_map({'x': req}))
except AttributeError:
    sys.Log('format_map refused')
