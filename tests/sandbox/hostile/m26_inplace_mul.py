# expect: bounded-memory
s = 'a'
s *= 10 ** 10
