# expect: blocked-at-runtime
req.Header.Get(5)
