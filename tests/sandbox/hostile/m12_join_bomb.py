# expect: bounded-memory
s = ''.join(['x' * 1000000] * 10000)
