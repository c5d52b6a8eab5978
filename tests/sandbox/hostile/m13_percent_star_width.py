# expect: bounded-memory
s = '%0*d' % (2 * 10 ** 9, 1)
