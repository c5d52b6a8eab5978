# expect: blocked-at-compile
b = __builtins__
sys.Log('PWNED %s' % b)
