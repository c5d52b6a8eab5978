# expect: bounded-memory
s = ('\t' * 10).expandtabs(2 * 10 ** 8)
