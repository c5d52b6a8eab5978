# Day/night routing for an office number, used as both In and Out dialplan.
# The sandbox has no clock (no modules, no time functions), so the mode is a flag in
# the owner's key/value store: the owner dials *28 to switch night mode on and *29 to
# switch it off (or sets the key "mode" through the web API, e.g. from a cron job).
# By day, calls ring the owner's phones for 20 seconds, then go to voicemail at the
# provider "voicemail"; at night they go to voicemail at once.  Out calls other than
# the feature codes go out through the provider "main".
number = req.URI.User

if sys.Out:
    if number == "*28":
        sys.DBWrite("mode", "night")
        sys.Log("night mode on")
        sys.Respond(480, "Night mode on")
    if number == "*29":
        sys.DBDelete("mode")
        sys.Log("night mode off")
        sys.Respond(480, "Night mode off")
    sys.Dial("${dst}@main")
else:
    if sys.DBRead("mode") == "night":
        sys.Log("night mode: %s goes to voicemail" % req.Header.From.FromURI.User)
    else:
        sys.Dial("%s@local" % sys.Username, 20)
        sys.Log("no answer by day (%s %s)" % (sys.LastFailureStatus, sys.LastFailureReason))
    sys.Dial("vm-%s@voicemail" % sys.Username)
