# expect: blocked-at-compile
with req as r:
    sys.Log('PWNED')
