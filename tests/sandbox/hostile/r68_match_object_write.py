# expect: blocked-at-runtime
m = re.search('(1)', '1')
m.group = None
sys.Log('PWNED')
