# expect: blocked-at-compile
for TypeError in [1]:
    pass

