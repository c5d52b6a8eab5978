# expect: bounded-cpu
x = 1 << 10 ** 9
sys.Log('PWNED')
