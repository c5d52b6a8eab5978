# expect: bounded-memory
s = 'a'
while True:
    s = s + s
