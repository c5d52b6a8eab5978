# expect: bounded-cpu
while True:
    try:
        x = 7 ** 10 ** 7
    except Exception:
        pass
