# expect: bounded-cpu
def spin(x):
    while True:
        pass
sorted([1, 2, 3], key=spin)
