# expect: blocked-at-runtime
def f():
    return 1
sys.Log(repr(f))
sys.Log(str(f))
sys.Log('%s' % (f,))
sys.Log(f'{f}')
sys.Log(f'{f!r}')
sys.Log(str([f, lambda: 0]))
