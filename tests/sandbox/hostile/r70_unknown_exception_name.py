# expect: blocked-at-runtime
try:
    1/0
except ZeroDivisionError:
    raise StopIteration
