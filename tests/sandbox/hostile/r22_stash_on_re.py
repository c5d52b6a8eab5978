# expect: blocked-at-runtime
try:
    prev = re.stash
    sys.Log('LEAKED %s' % prev)
except AttributeError:
    pass
re.stash = req.URI.User
