# expect: bounded-memory
s = str(10 ** 60000)
