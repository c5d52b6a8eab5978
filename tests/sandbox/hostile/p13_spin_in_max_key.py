# expect: bounded-cpu
max([1, 2], key=lambda x: [0 for i in range(10 ** 9)])
