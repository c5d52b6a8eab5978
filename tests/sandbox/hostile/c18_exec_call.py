# expect: blocked-at-compile
exec('import os')

