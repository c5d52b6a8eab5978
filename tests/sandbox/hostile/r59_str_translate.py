# expect: blocked-at-runtime
s = 'a'.translate({97: 'b' * 1000})
sys.Log('PWNED translate')
