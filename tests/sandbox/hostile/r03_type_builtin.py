# expect: blocked-at-runtime
Evil = type('Evil', (), {})
sys.Log('PWNED %s' % Evil)
