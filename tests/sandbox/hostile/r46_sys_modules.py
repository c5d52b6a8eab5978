# expect: blocked-at-runtime
sys.Log('PWNED %s' % sys.modules)
