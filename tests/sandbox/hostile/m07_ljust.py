# expect: bounded-memory
s = 'x'.ljust(2 * 10 ** 9)
