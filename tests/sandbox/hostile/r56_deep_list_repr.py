# expect: blocked-at-runtime
l = []
for i in range(100000):
    l = [l]
try:
    repr(l)
except RecursionError:
    sys.Log('deep repr contained')
