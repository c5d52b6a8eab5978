# expect: blocked-at-runtime
try:
    prev = len.stash
    sys.Log('LEAKED %s' % prev)
except AttributeError:
    pass
len.stash = req.Header.From.ToString()
