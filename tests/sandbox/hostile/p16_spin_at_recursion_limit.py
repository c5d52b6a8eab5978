# expect: bounded-cpu
def depth(n):
    try:
        return depth(n + 1)
    except RecursionError:
        return n
limit = depth(0)
def spin(n, at):
    if n >= at:
        while True:
            pass
    return spin(n + 1, at)
while True:
    for at in (limit, limit - 1, limit - 2, limit - 3):
        try:
            spin(0, at)
        except RecursionError:
            pass
