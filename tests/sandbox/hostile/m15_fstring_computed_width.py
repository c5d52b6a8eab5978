# expect: bounded-memory
w = 2 * 10 ** 9
s = f"{'':>{w}}"
