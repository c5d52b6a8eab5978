# expect: blocked-at-compile
while True:
    try:
        pass
    finally:
        while True:
            pass
