# expect: blocked-at-compile
sys.Log('PWNED %s' % str.__base__.__subclasses__())

