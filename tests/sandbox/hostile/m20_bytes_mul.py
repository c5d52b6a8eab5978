# expect: bounded-memory
b = b'a' * 10 ** 10
