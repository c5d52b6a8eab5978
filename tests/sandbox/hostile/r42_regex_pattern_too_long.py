# expect: blocked-at-runtime
re.search('a' * 300, 'a')
