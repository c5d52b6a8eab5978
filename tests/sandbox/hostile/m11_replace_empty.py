# expect: bounded-memory
s = ('ab' * 1000).replace('', 'y' * 10 ** 6)
