# expect: blocked-at-runtime
legs = '&'.join(['%d@provider' % i for i in range(15)])
sys.Dial(legs)
try:
    sys.Dial(legs)
    sys.Log('PWNED more than 20 legs')
except ValueError as e:
    sys.Log('refused: %s' % e)
