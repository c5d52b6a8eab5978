# expect: blocked-at-runtime
try:
    sys.Log('PWNED %s' % sys.Log.im_func)
except AttributeError:
    pass
m = 'abc'.upper
sys.Log('PWNED %s' % m.func)
