# expect: blocked-at-runtime
t = ()
for i in range(300000):
    t = (t,)
sys.Log('lookup %s' % (t in {}))
