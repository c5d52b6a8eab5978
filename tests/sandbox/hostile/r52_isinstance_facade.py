# expect: blocked-at-runtime
isinstance(1, sys)
