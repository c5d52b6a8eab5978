# expect: bounded-memory
keep = []
while True:
    keep.append('x' * 4000000)
