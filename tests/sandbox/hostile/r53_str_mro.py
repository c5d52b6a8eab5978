# expect: blocked-at-runtime
sys.Log('PWNED %s' % str.mro())
