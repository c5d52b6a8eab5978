# expect: blocked-at-runtime
f = str.format
sys.Log('PWNED ' + f('{0}', req))
