# expect: blocked-at-compile
try:
    pass
except* ValueError:
    pass

