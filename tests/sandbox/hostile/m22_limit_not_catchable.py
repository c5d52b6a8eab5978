# expect: bounded-memory
try:
    s = 'a' * 10 ** 10
except Exception:
    sys.Log('PWNED caught the memory limit')
sys.Log('PWNED continued')
