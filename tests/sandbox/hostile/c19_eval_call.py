# expect: blocked-at-compile
eval('1+1')

