# expect: bounded-cpu
while True:
    pass
