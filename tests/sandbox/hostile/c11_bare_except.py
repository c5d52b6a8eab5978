# expect: blocked-at-compile
while True:
    try:
        while True:
            pass
    except:
        pass
