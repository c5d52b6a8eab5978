# expect: blocked-at-runtime
for name in ('random', 'math', 'string', 'os'):
    try:
        sys.Log('PWNED %s' % {'random': random}[name])
    except NameError:
        pass
random.seed(1)
