# expect: blocked-at-runtime
t = ()
i = 0
while i < 300000:
    t = (t,)
    i += 1
s = {t}
sys.Log('set member ok')
