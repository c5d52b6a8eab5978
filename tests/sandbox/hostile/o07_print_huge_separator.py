# expect: bounded-output
print('a', 'b', sep='x' * 1000000)
