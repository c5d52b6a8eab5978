# expect: blocked-at-runtime
sys.Username = 'admin'
sys.Log('PWNED ' + sys.Username)
