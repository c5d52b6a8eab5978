# expect: blocked-at-runtime
sys.Respond(True)
sys.Log('PWNED bool accepted')
