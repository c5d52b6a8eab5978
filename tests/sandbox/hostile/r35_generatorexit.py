# expect: blocked-at-runtime
raise GeneratorExit()
