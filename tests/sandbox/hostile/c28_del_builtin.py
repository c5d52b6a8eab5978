# expect: blocked-at-compile
del len

