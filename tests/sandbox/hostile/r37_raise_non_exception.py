# expect: blocked-at-runtime
raise 5
