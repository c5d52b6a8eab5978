# expect: blocked-at-compile
import os
sys.Log('PWNED ' + os.getcwd())
