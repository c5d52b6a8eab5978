# expect: bounded-cpu
while True:
    try:
        while True:
            pass
    except Exception:
        pass
