# expect: blocked-at-compile
sys.Log(f'PWNED {sys._port}')

