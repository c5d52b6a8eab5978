# expect: blocked-at-compile
async def f():
    return 1

