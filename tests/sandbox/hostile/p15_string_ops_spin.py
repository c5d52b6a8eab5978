# expect: bounded-cpu
s = 'x' * 1000
while True:
    s = s.upper().lower()
