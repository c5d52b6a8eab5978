# expect: blocked-at-runtime
import_free = 1
m = re.match(r'(a+)+$', 'a' * 4000 + 'b')
sys.Log('redos finished: %s' % (m is None))
