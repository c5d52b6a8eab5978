"""The SIP package's exceptions (see the tree in :mod:`sip`)."""

from __future__ import annotations


class SIPError(Exception):
    """Base of every error raised by the :mod:`sip` package."""


class SIPParseError(SIPError):
    """Network bytes that are not an acceptable SIP message.

    ``status`` and ``reason`` are the response a server sends back when the bytes were a
    request (RFC 3261 section 21); the reason phrase names the defect so that the sender
    can fix it.  ``headers`` are extra header lines for that response (for example
    ``Unsupported`` with a 420, ``Accept`` with a 415).  ``is_response`` is True when the
    bytes were recognisably a response: those are dropped, never answered.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int = 400,
        headers: tuple[tuple[str, str], ...] = (),
        is_response: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.is_response = is_response


class SIPValueError(SIPError, ValueError):
    """A value given by our own code cannot be put into a SIP message."""


class SDPError(SIPError):
    """An SDP body (RFC 4566) that cannot be parsed.  Bodies come from the network, so
    :mod:`sip.sdp` raises this and nothing else for any input."""
