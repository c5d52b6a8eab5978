# expect: bounded-output
while True:
    print('y' * 5000)
