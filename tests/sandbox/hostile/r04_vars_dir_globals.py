# expect: blocked-at-runtime
for name in ['vars', 'dir', 'globals', 'locals', 'object', 'super', 'iter', 'next', 'format', 'pow', 'hash', 'id']:
    try:
        sys.Log('PWNED %s' % {'vars': vars, 'dir': dir}[name])
    except Exception as e:
        pass

