# expect: bounded-output
sys.Log('a\n' * 100000)
