# expect: blocked-at-runtime
try:
    sys.Log('LEAKED %s' % ValueError.stash)
except AttributeError:
    pass
ValueError.stash = 1
