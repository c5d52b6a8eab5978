# expect: blocked-at-compile
f = lambda Exception=1: Exception

