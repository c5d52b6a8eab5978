# expect: blocked-at-runtime
sys.Log(str(map(len, ['a'])))
sys.Log(str(zip([1])))
sys.Log(str(enumerate([1])))
sys.Log(repr(reversed([1, 2])))
