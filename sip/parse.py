"""The one entry point for network bytes: :func:`parse_message_untrusted`.

(Provisional minimal version; hardened against RFC 4475 in its own change.)
"""

from __future__ import annotations

from sip.errors import SIPParseError
from sip.headers import Headers
from sip.message import Message, Request, Response
from sip.uri import URI

MAX_MESSAGE = 64 * 1024


def parse_message_untrusted(data: bytes) -> Message:
    """Parse one SIP message from a datagram (or a framed stream message).

    Raises only :class:`SIPParseError`."""
    try:
        return _parse(data)
    except SIPParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the contract: one error type escapes
        raise SIPParseError(f"Malformed message ({type(exc).__name__})") from exc


def _parse(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE:
        raise SIPParseError("Message too large", status=513)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SIPParseError("Message has no end of headers")
    lines = head.decode("utf-8", "replace").split("\r\n")
    start = lines[0]
    raw: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and raw:
            raw[-1] = (raw[-1][0], raw[-1][1] + " " + line.strip())
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SIPParseError("Header line without a colon")
        raw.append((name.strip(), value.strip()))
    headers = Headers(raw)
    cl = headers.get("Content-Length")
    if cl is not None:
        n = int(cl)
        if n > len(body):
            raise SIPParseError("Content-Length larger than the message")
        body = body[:n]
    if start.startswith("SIP/2.0 "):
        code, _, reason = start[8:].partition(" ")
        return Response(status=int(code), reason=reason, headers=headers, body=body)
    method, uri, version = start.split(" ")
    if version != "SIP/2.0":
        raise SIPParseError("Version not supported", status=505)
    return Request(method=method, uri=URI.parse(uri), headers=headers, body=body)
