# expect: blocked-at-runtime
re.search(r'(a)\1', 'aa')
