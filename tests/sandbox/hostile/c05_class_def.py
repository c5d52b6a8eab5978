# expect: blocked-at-compile
class Dest(str):
    def __eq__(self, other):
        return True
sys.Dial(Dest('1@x'))
