# expect: blocked-at-runtime
req.Header.UnknownHeaders.append('X: 1')
sys.Log('PWNED')
