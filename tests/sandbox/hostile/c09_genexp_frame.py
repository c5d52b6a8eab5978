# expect: blocked-at-compile
g = (x for x in [1])
sys.Log('PWNED %s' % g.gi_frame)
