# expect: bounded-memory
s = 10 ** 10 * 'a'
