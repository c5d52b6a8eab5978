# expect: blocked-at-runtime
raise SystemExit(0)
