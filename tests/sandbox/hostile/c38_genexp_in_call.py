# expect: blocked-at-compile
ok = any(x == '1' for x in req.URI.User)

