# expect: bounded-memory
s = f'{1.0:.999999999f}'
