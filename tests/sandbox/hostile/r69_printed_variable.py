# expect: blocked-at-runtime
print('secret')
sys.Log('printed=[%s]' % printed)
