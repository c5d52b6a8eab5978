# expect: blocked-at-runtime
re.sub('a', lambda m: 'PWNED', 'a')
