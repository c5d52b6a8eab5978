# expect: blocked-at-runtime
def f():
    return 1
d = {}
d[f]
