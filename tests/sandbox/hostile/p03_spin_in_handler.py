# expect: bounded-cpu
try:
    raise ValueError()
except ValueError:
    while True:
        pass
