# expect: blocked-at-compile
sys = None

