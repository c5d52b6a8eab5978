# expect: blocked-at-runtime
raise KeyboardInterrupt()
