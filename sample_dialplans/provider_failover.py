# Outbound calls through two SIP providers with fail-over (an Out dialplan).
# "|" in the dial string tries the backup provider only when every leg before it failed:
# the primary answered 4xx-6xx, timed out, or could not be reached.  When both fail the
# caller hears why: a callee that is busy, refuses or does not exist is passed on as is;
# anything else (providers down, 5xx, time-outs) becomes one clear 503.
# Needs two providers: dialspell provider add CUSTOMER primary --server HOST ...
#                      dialspell provider add CUSTOMER backup --server HOST ...
number = req.URI.User
if not re.fullmatch(r"\+?[0-9]{3,15}", number):
    sys.Respond(484, "Address Incomplete")

sys.Log("calling %s via primary, then backup" % number)
result = sys.Dial("${dst}@primary|${dst}@backup", 60)

status = sys.LastFailureStatus
sys.Log("both providers failed (%s): %s %s" % (result, status, sys.LastFailureReason))
if status in (404, 484, 486, 600, 603):
    sys.Respond(status, sys.LastFailureReason)
sys.Respond(503, "All providers failed")
