# Outbound routing by number shape: emergency numbers go to the emergency provider,
# international numbers (00 or +) to a cheap international provider with a fallback,
# everything else to the main provider.  ${dst:2} drops the 00 prefix.
number = req.URI.User
sys.Log("routing %s (%s)" % (number, "out" if sys.Out else "in"))

if re.fullmatch(r"(112|911|999)", number):
    sys.Dial("${dst}@emergency")
elif re.match(r"00\d{6,}$", number):
    sys.Dial("${dst:2}@intl-cheap|${dst:2}@intl-backup")
elif number.startswith("+"):
    sys.Dial("%s@intl-cheap" % number[1:])
else:
    sys.Dial("${dst}@main-provider", 30)
sys.Log("every route failed: %s" % sys.LastFailureReason)
sys.Respond(480, "All routes busy")
