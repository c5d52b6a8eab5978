"""SIP dialogs, sans-IO (RFC 3261 section 12): the state two user agents share after an
INVITE is answered, and the requests built within it.

A B2BUA holds two dialogs per bridged call: one as UAS towards the caller, one as UAC
towards the callee.  Besides the RFC state, each dialog remembers the address the peer's
messages actually come from (``flow``): a phone behind NAT advertises a private Contact
it cannot be reached at, so in-dialog requests go to the flow over UDP, the symmetric
behaviour RFC 3581 gives responses (SIP Outbound, RFC 5626, generalises it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sip.errors import SIPParseError, SIPValueError
from sip.headers import Headers, NameAddr, sent_via
from sip.message import Request, Response, new_branch
from sip.uri import URI

Address = tuple[str, int]


@dataclass(slots=True, kw_only=True)
class Dialog:
    """One side of a dialog.  Mutable: CSeq numbers and the remote target move on."""

    call_id: str
    local_tag: str
    remote_tag: str
    local: NameAddr  # our From for requests we send (without tag)
    remote: NameAddr  # their address (our To), without tag
    local_cseq: int
    remote_cseq: int | None
    remote_target: URI
    route_set: tuple[str, ...] = ()
    flow: Address | None = None
    transport: str = "UDP"
    # Our Contact (RFC 3261 12.1.1: a dialog's requests carry the local target).
    contact: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def as_uas(
        cls, request: Request, *, local_tag: str, contact: str, flow: Address, transport: str
    ) -> Dialog:
        """The dialog a UAS creates when it answers ``request`` with a 2xx/1xx (12.1.1)."""
        contacts = request.contacts
        if not contacts:
            raise SIPParseError("INVITE without Contact cannot create a dialog")
        from_ = request.from_
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local=request.to.without_tag(),
            remote=from_.without_tag(),
            local_cseq=0,
            remote_cseq=request.cseq.number,
            remote_target=contacts[0].uri,
            # 12.1.1: the route set is the Record-Route list, in order.
            route_set=tuple(request.headers.get_all("Record-Route")),
            flow=flow,
            transport=transport,
            contact=contact,
        )

    @classmethod
    def as_uac(
        cls, request: Request, response: Response, *, flow: Address, transport: str, contact: str
    ) -> Dialog:
        """The dialog a UAC creates from a 2xx (or 1xx with To tag) to ``request`` (12.1.2)."""
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id,
            local_tag=request.from_.tag or "",
            remote_tag=response.to.tag or "",
            local=request.from_.without_tag(),
            remote=request.to.without_tag(),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            remote_target=target,
            # 12.1.2: the route set is the Record-Route list in reverse order.
            route_set=tuple(reversed(response.headers.get_all("Record-Route"))),
            flow=flow,
            transport=transport,
            contact=contact,
        )

    # -- matching -------------------------------------------------------------------------
    @property
    def key(self) -> tuple[str, str, str]:
        """(Call-ID, local tag, remote tag): how requests find their dialog (12)."""
        return (self.call_id, self.local_tag, self.remote_tag)

    @staticmethod
    def key_of(request: Request) -> tuple[str, str, str]:
        """The dialog key a request received from the peer belongs to."""
        return (request.call_id, request.to.tag or "", request.from_.tag or "")

    def accept_remote_request(self, request: Request) -> bool:
        """Check and record the remote CSeq (12.2.2): a lower one is out of order (500)."""
        number = request.cseq.number
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def refresh_target(self, message: Request | Response) -> None:
        """A target refresh (re-INVITE, UPDATE, or their 2xx) may change the Contact."""
        contacts = message.contacts
        if contacts:
            self.remote_target = contacts[0].uri

    # -- building requests ---------------------------------------------------------------
    def create_request(
        self,
        method: str,
        *,
        via_host: str,
        via_port: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        cseq: int | None = None,
        branch: str | None = None,
    ) -> Request:
        """A request within the dialog (12.2.1.1).  ACK reuses the INVITE's CSeq number
        (pass ``cseq``); every other request takes the next local number."""
        if method == "ACK":
            if cseq is None:
                raise SIPValueError("ACK needs the CSeq number of its INVITE")
            number = cseq
        else:
            self.local_cseq += 1
            number = self.local_cseq
        uri, routes = self._request_uri_and_routes()
        items: list[tuple[str, str]] = [
            ("Via", sent_via(self.transport, via_host, via_port, branch or new_branch())),
            ("Max-Forwards", "70"),
        ]
        items.extend(("Route", r) for r in routes)
        items.append(("From", f"{self.local};tag={self.local_tag}"))
        items.append(("To", f"{self.remote};tag={self.remote_tag}" if self.remote_tag else str(self.remote)))
        items.append(("Call-ID", self.call_id))
        items.append(("CSeq", f"{number} {method}"))
        if self.contact and method in ("INVITE", "UPDATE"):
            items.append(("Contact", self.contact))
        items.extend(headers)
        if body and content_type:
            items.append(("Content-Type", content_type))
        return Request(method=method, uri=uri, headers=Headers(items), body=body)

    def _request_uri_and_routes(self) -> tuple[URI, list[str]]:
        # 12.2.1.1: with a loose-routing first hop (lr), the Request-URI is the remote
        # target and the route set goes in Route; with a strict router, the first route
        # becomes the Request-URI and the remote target is appended.
        if not self.route_set:
            return self.remote_target, []
        first = NameAddr.parse(self.route_set[0])
        if first.uri.has_param("lr"):
            return self.remote_target, list(self.route_set)
        return first.uri, [*self.route_set[1:], f"<{self.remote_target}>"]

    def destination(self) -> Address | None:
        """Where to send a request: the peer's flow, or the first route / target when the
        host is numeric.  None means the caller must resolve a host name (RFC 3263)."""
        if self.flow is not None and not self.route_set:
            return self.flow
        uri, _ = self._request_uri_and_routes()
        if self.route_set:
            uri = NameAddr.parse(self.route_set[0]).uri
        host = uri.host.strip("[]")
        if _is_numeric(host):
            return (host, uri.port or 5060)
        return self.flow


def _is_numeric(host: str) -> bool:
    if ":" in host:
        return True
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)
