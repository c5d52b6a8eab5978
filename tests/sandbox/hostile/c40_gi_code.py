# expect: blocked-at-compile
def f():
    return 1
sys.Log('PWNED %s' % f.gi_code)

