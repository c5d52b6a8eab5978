# expect: blocked-at-compile
if (KeyError := 1):
    pass

