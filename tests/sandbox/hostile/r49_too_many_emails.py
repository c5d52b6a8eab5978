# expect: blocked-at-runtime
for i in range(3):
    sys.Email('a@example.com', 'hi', 'body')
try:
    sys.Email('a@example.com', 'hi', 'body')
    sys.Log('PWNED fourth e-mail')
except ValueError:
    sys.Log('fourth e-mail refused')
