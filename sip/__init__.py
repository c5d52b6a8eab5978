"""The SIP protocol for dialspell: a sans-IO core and a trio transport shell.

Pure modules (no I/O, no trio): :mod:`sip.errors`, :mod:`sip.uri`, :mod:`sip.headers`,
:mod:`sip.message`, :mod:`sip.parse`, :mod:`sip.sdp`, :mod:`sip.digest`,
:mod:`sip.transaction`.  They take bytes, values and ``now`` and return bytes, values and
the next deadline.  Only :mod:`sip.transport` touches sockets and clocks.

Exception tree::

    SIPError
    ├── SIPParseError     bytes from the network that are not an acceptable message
    │                     (``status`` is the response a server should send, e.g. 400/505)
    ├── SIPValueError     a value our own code tried to put into a message is invalid
    └── SDPError          an SDP body from the network that cannot be parsed

This package never imports ``engine`` or ``sandbox``.
"""
