# expect: bounded-memory
t = (0,) * 10 ** 9
