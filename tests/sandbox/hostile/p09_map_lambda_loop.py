# expect: bounded-cpu
while True:
    list(map(lambda x: x, range(1000)))
