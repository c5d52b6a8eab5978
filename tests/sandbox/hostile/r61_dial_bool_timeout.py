# expect: blocked-at-runtime
sys.Dial('1@x', True)
sys.Log('PWNED bool ring timeout')
