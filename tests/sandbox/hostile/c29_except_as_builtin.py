# expect: blocked-at-compile
try:
    1/0
except ZeroDivisionError as len:
    pass

