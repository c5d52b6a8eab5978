# expect: blocked-at-compile
try:
    1/0
except ZeroDivisionError as e:
    sys.Log('PWNED %s' % e.__traceback__.tb_frame.f_globals)

