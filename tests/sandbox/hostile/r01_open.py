# expect: blocked-at-runtime
data = open('/etc/passwd').read()
sys.Log('PWNED ' + data)
