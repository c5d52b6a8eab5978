# expect: blocked-at-runtime
def f(n):
    return f(n + 1)
try:
    f(0)
except RecursionError:
    sys.Log('recursion contained')
f(0)
