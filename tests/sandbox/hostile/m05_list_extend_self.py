# expect: bounded-memory
l = [0]
while True:
    l.extend(l)
