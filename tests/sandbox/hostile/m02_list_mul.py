# expect: bounded-memory
l = [0] * 10 ** 9
sys.Log('PWNED')
