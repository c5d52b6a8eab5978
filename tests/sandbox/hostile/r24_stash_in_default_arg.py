# expect: blocked-at-runtime
def remember(x, seen=[]):
    seen.append(x)
    return seen
if len(remember(req.URI.User)) > 1:
    sys.Log('LEAKED previous calls')
