# The seed's Google Voice dialplan: ask the callback service to ring our Google Voice
# forwarding number and connect it to the number dialled; the caller is bridged to
# that incoming call.  If no callback arrives in 7 seconds, fall back to a SIP provider
# named "myprovider" (add it with: dialspell provider add CUSTOMER myprovider ...).
sys.Log("starting dialplan...")
sys.GoogleVoiceCall("me@example.com", "password", "17476120000", req.URI.User, ".*", 7)
sys.Log("Sorry, Google Voice Call failed.")
sys.Dial("${dst}@myprovider")
