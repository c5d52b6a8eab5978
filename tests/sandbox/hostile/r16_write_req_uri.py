# expect: blocked-at-runtime
orig = req.URI.User
try:
    req.URI.User = 'evil'
except TypeError:
    pass
if req.URI.User != orig:
    sys.Log('PWNED req changed')
req.URI.User = 'evil'
