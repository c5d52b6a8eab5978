# expect: bounded-memory
l = list(range(10 ** 9))
sys.Log('PWNED')
