# expect: blocked-at-compile
sys.Log('PWNED %s' % req.__dict__)

