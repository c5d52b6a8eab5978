# expect: bounded-cpu
x = 3
while True:
    x = x * x
