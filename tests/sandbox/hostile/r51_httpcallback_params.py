# expect: blocked-at-runtime
sys.HttpCallback('http://example.com/cb', {'a': 1})
sys.Log('PWNED non-str param')
