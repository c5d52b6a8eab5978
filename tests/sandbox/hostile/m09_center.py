# expect: bounded-memory
s = 'x'.center(2 * 10 ** 9)
