# expect: bounded-memory
rows = [[0] * 1000 for i in range(10 ** 6)]
