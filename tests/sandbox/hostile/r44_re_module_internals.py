# expect: blocked-at-runtime
sys.Log('PWNED %s' % re.enum.sys.modules)
