# An In dialplan that behaves exactly like the Direct option: log the call, then ring
# every current binding of the owner's own account.
sys.Log("call from %s to %s." % (req.Header.From.FromURI.ToString(), req.URI.User))
sys.Dial("%s@local" % sys.Username)
