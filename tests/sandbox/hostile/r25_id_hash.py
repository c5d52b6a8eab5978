# expect: blocked-at-runtime
sys.Log('PWNED %x' % id(sys))
