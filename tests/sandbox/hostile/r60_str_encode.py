# expect: blocked-at-runtime
b = 'a'.encode()
sys.Log('PWNED encode')
