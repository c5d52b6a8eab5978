# A blacklist kept in the owner's key/value store.  Calls to *66<user> add <user> to
# the list; a call from a listed user is rejected with 603 Decline; any other call
# goes to the owner's phones and, if nobody answers, to voicemail at the provider.
caller = req.Header.From.FromURI.User
number = req.URI.User

if number.startswith("*66") and len(number) > 3:
    blocked = number[3:]
    sys.DBWrite("block:" + blocked, "1")
    sys.Log("added %s to the blacklist" % blocked)
    sys.Respond(486, "Blacklisted")

if sys.DBRead("block:" + caller) is not None:
    sys.Log("rejecting blacklisted caller %s" % caller)
    sys.Respond(603, "Decline")

result = sys.Dial("%s@local" % sys.Username, 20)
sys.Log("no answer (%s, %s %s); trying voicemail" % (result, sys.LastFailureStatus, sys.LastFailureReason))
sys.Dial("vm-%s@voicemail-provider" % sys.Username)
