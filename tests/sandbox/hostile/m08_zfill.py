# expect: bounded-memory
s = 'x'.zfill(2 * 10 ** 9)
