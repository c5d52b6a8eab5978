# expect: bounded-cpu
while True:
    re.search('(a|b)*c', 'ab' * 1000)
