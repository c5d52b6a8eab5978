# expect: bounded-output
chunk = 'x' * 100000
while True:
    sys.Log(chunk)
