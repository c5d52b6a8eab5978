# expect: blocked-at-runtime
try:
    1/0
except ZeroDivisionError as e:
    sys.Log('PWNED %s' % e.with_traceback)
