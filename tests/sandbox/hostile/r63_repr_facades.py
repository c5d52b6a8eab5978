# expect: blocked-at-runtime
sys.Log(f'{req!r} {req.URI!r} {req.Header!r} {sys!r} {re!r}')
sys.Log('%r %r' % (sys.Dial, req.Header.From))
m = re.search('1', '1')
sys.Log(repr(m))
