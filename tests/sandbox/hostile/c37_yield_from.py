# expect: blocked-at-compile
def g():
    yield from [1]

