# expect: blocked-at-compile
def gen():
    yield 1
for x in gen():
    sys.Log('PWNED generator ran')
