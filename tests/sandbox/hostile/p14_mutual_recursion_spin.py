# expect: bounded-cpu
def a(n):
    while True:
        try:
            return b(n)
        except RecursionError:
            pass
def b(n):
    return a(n)
a(0)
