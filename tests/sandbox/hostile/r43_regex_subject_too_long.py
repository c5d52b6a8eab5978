# expect: blocked-at-runtime
re.search('a', 'b' * 5000)
