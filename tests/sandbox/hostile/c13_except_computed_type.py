# expect: blocked-at-compile
E = ValueError
try:
    while True:
        pass
except E:
    pass
