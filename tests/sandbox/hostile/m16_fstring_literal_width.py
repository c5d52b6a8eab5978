# expect: bounded-memory
s = f'{1:>999999999}'
