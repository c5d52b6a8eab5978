# expect: blocked-at-runtime
for i in range(3):
    sys.Callback('1@x', '2@x')
try:
    sys.Callback('1@x', '2@x')
    sys.Log('PWNED fourth callback')
except ValueError:
    sys.Log('fourth callback refused')
