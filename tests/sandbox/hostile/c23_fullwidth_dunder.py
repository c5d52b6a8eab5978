# expect: blocked-at-compile
x = ＿＿builtins＿＿
sys.Log('PWNED')
