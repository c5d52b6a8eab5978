# expect: blocked-at-runtime
p = re.compile('a')
sys.Log('PWNED %s' % p)
