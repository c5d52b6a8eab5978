# expect: bounded-memory
s = '%2000000000d' % 1
