# expect: bounded-output
while True:
    try:
        sys.Log('q' * 900)
    except Exception:
        pass
