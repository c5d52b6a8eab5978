# expect: blocked-at-compile
match req.URI.User:
    case '1':
        sys.Log('one')

