# A webcallback dialplan that tests a regular expression without placing a call:
# it logs whether the called number ends in *1234.
sys.Log("webcallback dialplan starting...callback number=%s" % req.URI.User)
if re.search(r"\*1234$", req.URI.User):
    sys.Log("%s matched /\\*1234$/" % req.URI.User)
else:
    sys.Log("No match")
