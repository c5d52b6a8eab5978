# expect: bounded-output
sys.Log('z' * 1000000)
sys.Log('after')
