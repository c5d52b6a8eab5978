# expect: blocked-at-compile
ValueError = 5
try:
    while True:
        pass
except ValueError:
    pass
