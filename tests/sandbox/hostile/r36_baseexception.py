# expect: blocked-at-runtime
raise BaseException('x')
