# expect: blocked-at-compile
m = __metaclass__

