# expect: bounded-output
i = 0
while True:
    sys.Log('line %d' % i)
    i += 1
