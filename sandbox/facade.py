"""What a dialplan sees: ``sys`` (call control), ``req`` (the request) and ``re``.

These objects live in the worker, next to the script.  They are deliberately dull:

* every ``sys`` method checks the *exact* type of each argument (``type(x) is str``; a
  subclass never passes, so no attacker method ever runs inside host code), its length
  and its characters (no CR/LF/NUL where it would reach a SIP message), and raises a
  plain ``TypeError``/``ValueError`` whose message names the method and the argument;
* only plain values leave: the port turns the call into a JSON frame for the host;
* ``req`` is a frozen snapshot made of str/int/None and tuples; every write raises;
* ``re`` is backed by RE2 (linear time, no backreferences), with bounded pattern and
  subject sizes, and returns match objects that carry plain data only;
* no ``repr`` shows an address, a path or a private field.

Private state sits in ``__slots__`` whose names start with ``_``, which the compiler
refuses in scripts; ``sandbox.tables.ATTRIBUTES`` admits exactly the ``PUBLIC`` names.
"""

from __future__ import annotations

import re as stdlib_re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, Protocol

import re2

from sandbox.limits import Limits

_CTL = stdlib_re.compile(r"[\r\n\x00]")
_HEADER_NAME = stdlib_re.compile(r"[A-Za-z0-9!%*_+`'~.-]{1,64}")
_REFUSED_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via", "From", "To", "Contact", "CSeq", "Call-ID", "Max-Forwards",
        "Content-Length", "Route", "Record-Route", "v", "f", "t", "m", "i", "l",
    )
)
_OPTION_BLOCK = stdlib_re.compile(r"\[[^\]]*\]")
_LEG_SEPARATOR = stdlib_re.compile(r"[&|]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A host reply as the worker received it (already plain data)."""

    value: object = None
    failure_status: int | None = None
    failure_reason: str | None = None


class Port(Protocol):
    """The execution's line to the host (implemented by the worker)."""

    limits: Limits

    def log(self, text: str) -> None: ...

    def call(self, name: str, args: list[object]) -> Reply: ...


# --- argument checks (messages are for the dialplan's author) ------------------------


def _kind(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _type_error(method: str, arg: str, wanted: str, value: object) -> NoReturn:
    raise TypeError(f"sys.{method}(): {arg} must be {wanted}, not {_kind(value)}")


def _text(method: str, arg: str, value: object, max_chars: int, *, none: bool = False) -> Any:
    if value is None and none:
        return None
    if type(value) is not str:
        _type_error(method, arg, "a str" + (" or None" if none else ""), value)
    if len(value) > max_chars:
        raise ValueError(f"sys.{method}(): {arg} is longer than {max_chars} characters")
    if _CTL.search(value):
        raise ValueError(f"sys.{method}(): {arg} must not contain CR, LF or NUL")
    return value


def _integer(method: str, arg: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:
        _type_error(method, arg, "an int", value)
    if not low <= value <= high:
        raise ValueError(f"sys.{method}(): {arg} must be between {low} and {high}")
    return value


def _number(method: str, arg: str, value: object, low: float, high: float) -> float:
    if type(value) is not int and type(value) is not float:
        _type_error(method, arg, "a number", value)
    if not low <= value <= high:
        raise ValueError(f"sys.{method}(): {arg} must be between {low} and {high}")
    return float(value)


def count_legs(dialstring: str) -> int:
    """How many legs a dial string forks to (options in [...] ignored)."""
    bare = _OPTION_BLOCK.sub("", dialstring)
    return max(1, sum(1 for part in _LEG_SEPARATOR.split(bare) if part.strip()))


class _Frozen:
    """Base of the read-only snapshot objects."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError(f"{self._label()} is read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise TypeError(f"{self._label()} is read-only")

    def _label(self) -> str:
        return "req"


def _set(obj: object, **values: object) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


class Sys:
    """``sys``: call control.  Every method is documented in docs/dialplan-api.md."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset(
        {
            "Dial", "Respond", "Log", "Callback", "GoogleVoiceCall", "HttpCallback",
            "ExtendScriptTimeout", "SetCustomSIPHeader", "RemoveCustomSIPHeader",
            "ClearCustomSIPHeaders", "SetFromHeader", "ClearFromHeader", "DBWrite",
            "DBRead", "DBDelete", "DBGetKeys", "WebGet", "Email", "IsAvailable", "IsMine",
            "DoesSIPAccountExist", "GetBindings", "GetCurrentCallCount", "Username",
            "DialPlanName", "In", "Out", "Trace", "LastFailureStatus", "LastFailureReason",
        }
    )
    __slots__ = (
        "_port", "_limits", "_username", "_dialplan", "_inbound", "_trace",
        "_last_status", "_last_reason", "_legs", "_callbacks", "_emails",
    )

    def __init__(self, port: Port, context: Mapping[str, object]) -> None:
        # Plain slot stores: with __slots__, no __dict__, read-only properties and
        # methods on the class, the only assignable public name is Trace (a property
        # that checks its value); the private slots are out of a script's reach
        # because the compiler refuses names starting with "_".
        username = context.get("Username", "")
        dialplan = context.get("DialPlanName", "")
        self._port = port
        self._limits = port.limits
        self._username = username if type(username) is str else ""
        self._dialplan = dialplan if type(dialplan) is str else ""
        self._inbound = context.get("Direction", "In") != "Out"
        self._trace = True
        self._last_status: int | None = None
        self._last_reason: str | None = None
        self._legs = 0
        self._callbacks = 0
        self._emails = 0

    def __delattr__(self, name: str) -> NoReturn:
        raise TypeError("sys attributes cannot be deleted")

    def __repr__(self) -> str:
        return "<sys>"

    # --- properties ------------------------------------------------------------

    @property
    def Username(self) -> str:
        return self._username

    @property
    def DialPlanName(self) -> str:
        return self._dialplan

    @property
    def In(self) -> bool:
        return self._inbound

    @property
    def Out(self) -> bool:
        return not self._inbound

    @property
    def Trace(self) -> bool:
        return self._trace

    @Trace.setter
    def Trace(self, value: object) -> None:
        if type(value) is not bool:
            raise TypeError(f"sys.Trace must be True or False, not {_kind(value)}")
        self._trace = value

    @property
    def LastFailureStatus(self) -> int | None:
        return self._last_status

    @property
    def LastFailureReason(self) -> str | None:
        return self._last_reason

    def trace_enabled(self) -> bool:
        """Host-side accessor (not in PUBLIC, so scripts cannot reach it)."""
        return self._trace

    # --- methods ---------------------------------------------------------------

    def _call(self, name: str, *args: object) -> object:
        reply = self._port.call(name, list(args))
        return reply.value

    def Dial(self, dialstring: object, ringTimeout: object = 0, answeredCallLimit: object = 0) -> str:
        text = _text("Dial", "dialstring", dialstring, 2048)
        if not text.strip():
            raise ValueError("sys.Dial(): dialstring is empty")
        ring = _integer("Dial", "ringTimeout", ringTimeout, 0, 86400)
        limit = _integer("Dial", "answeredCallLimit", answeredCallLimit, 0, 86400 * 7)
        legs = count_legs(text)
        cap = self._limits.max_legs
        if self._legs + legs > cap:
            raise ValueError(f"sys.Dial(): at most {cap} legs per execution")
        self._legs += legs
        reply = self._port.call("Dial", [text, ring, limit])
        if reply.failure_status is not None:
            self._last_status = reply.failure_status
            self._last_reason = reply.failure_reason
        return reply.value if type(reply.value) is str else "Failed"

    def Respond(self, statusCode: object, reason: object = None, customHeaders: object = None) -> None:
        code = _integer("Respond", "statusCode", statusCode, 100, 699)
        text = _text("Respond", "reason", reason, 128, none=True)
        headers = _text("Respond", "customHeaders", customHeaders, 2048, none=True)
        self._call("Respond", code, text, headers)

    def Log(self, message: object) -> None:
        if type(message) is not str:
            _type_error("Log", "message", "a str", message)
        self._port.log(message)

    def Callback(self, dest1: object, dest2: object, delaySeconds: object = 0) -> None:
        first = _text("Callback", "dest1", dest1, 1024)
        second = _text("Callback", "dest2", dest2, 1024)
        delay = _integer("Callback", "delaySeconds", delaySeconds, 0, 15)
        cap = self._limits.max_callbacks
        if self._callbacks >= cap:
            raise ValueError(f"sys.Callback(): at most {cap} callbacks per execution")
        self._callbacks += 1
        self._call("Callback", first, second, delay)

    def GoogleVoiceCall(
        self,
        email: object,
        password: object,
        forwardingNumber: object,
        destinationNumber: object,
        fromUserPattern: object = ".*",
        phoneType: object = 2,
        waitSeconds: object = 30,
    ) -> None:
        args = [
            _text("GoogleVoiceCall", "email", email, 256),
            _text("GoogleVoiceCall", "password", password, 256),
            _text("GoogleVoiceCall", "forwardingNumber", forwardingNumber, 64),
            _text("GoogleVoiceCall", "destinationNumber", destinationNumber, 64),
            _text("GoogleVoiceCall", "fromUserPattern", fromUserPattern, 256),
            _integer("GoogleVoiceCall", "phoneType", phoneType, 0, 100),
            _wait_seconds("GoogleVoiceCall", waitSeconds),
        ]
        self._call("GoogleVoiceCall", *args)

    def HttpCallback(
        self, url: object, params: object, fromUserPattern: object = ".*", waitSeconds: object = 30
    ) -> None:
        address = _text("HttpCallback", "url", url, 2048)
        if type(params) is not dict:
            _type_error("HttpCallback", "params", "a dict of str to str", params)
        if len(params) > 50:
            raise ValueError("sys.HttpCallback(): params has more than 50 entries")
        plain: dict[str, str] = {}
        for key, value in params.items():
            plain[_text("HttpCallback", "a params key", key, 256)] = _text(
                "HttpCallback", "a params value", value, 1024
            )
        pattern = _text("HttpCallback", "fromUserPattern", fromUserPattern, 256)
        self._call("HttpCallback", address, plain, pattern, _wait_seconds("HttpCallback", waitSeconds))

    def ExtendScriptTimeout(self, seconds: object) -> None:
        self._call("ExtendScriptTimeout", _number("ExtendScriptTimeout", "seconds", seconds, 0, 3600))

    def SetCustomSIPHeader(self, name: object, value: object) -> None:
        header = _header_name("SetCustomSIPHeader", name)
        self._call("SetCustomSIPHeader", header, _text("SetCustomSIPHeader", "value", value, 1024))

    def RemoveCustomSIPHeader(self, name: object) -> None:
        self._call("RemoveCustomSIPHeader", _header_name("RemoveCustomSIPHeader", name))

    def ClearCustomSIPHeaders(self) -> None:
        self._call("ClearCustomSIPHeaders")

    def SetFromHeader(self, fromName: object, fromUser: object, fromHost: object) -> None:
        self._call(
            "SetFromHeader",
            _text("SetFromHeader", "fromName", fromName, 256, none=True),
            _text("SetFromHeader", "fromUser", fromUser, 256, none=True),
            _text("SetFromHeader", "fromHost", fromHost, 256, none=True),
        )

    def ClearFromHeader(self) -> None:
        self._call("ClearFromHeader")

    def DBWrite(self, key: object, value: object) -> None:
        self._call("DBWrite", _db_key("DBWrite", key), _text("DBWrite", "value", value, 1024))

    def DBRead(self, key: object) -> str | None:
        value = self._call("DBRead", _db_key("DBRead", key))
        return value if type(value) is str else None

    def DBDelete(self, key: object) -> None:
        self._call("DBDelete", _db_key("DBDelete", key))

    def DBGetKeys(self) -> list[str]:
        value = self._call("DBGetKeys")
        return [key for key in value if type(key) is str] if type(value) is list else []

    def WebGet(self, url: object, timeoutSeconds: object = 10) -> str | None:
        address = _text("WebGet", "url", url, 2048)
        timeout = min(_number("WebGet", "timeoutSeconds", timeoutSeconds, 0, 86400), 30.0)
        value = self._call("WebGet", address, timeout)
        return value if type(value) is str else None

    def Email(self, to: object, subject: object, body: object) -> None:
        recipients = _text("Email", "to", to, 1024)
        if len([a for a in stdlib_re.split(r"[,;]", recipients) if a.strip()]) > 5:
            raise ValueError("sys.Email(): at most 5 addresses")
        title = _text("Email", "subject", subject, 256)
        if type(body) is not str:
            _type_error("Email", "body", "a str", body)
        if len(body) > 4096:
            raise ValueError("sys.Email(): body is longer than 4096 characters")
        cap = self._limits.max_emails
        if self._emails >= cap:
            raise ValueError(f"sys.Email(): at most {cap} e-mails per execution")
        self._emails += 1
        self._call("Email", recipients, title, body)

    def IsAvailable(self, username: object = None, domain: object = None) -> bool:
        return self._call(
            "IsAvailable",
            _text("IsAvailable", "username", username, 256, none=True),
            _text("IsAvailable", "domain", domain, 256, none=True),
        ) is True

    def IsMine(self, username: object, domain: object = None) -> bool:
        return self._call(
            "IsMine",
            _text("IsMine", "username", username, 256),
            _text("IsMine", "domain", domain, 256, none=True),
        ) is True

    def DoesSIPAccountExist(self, username: object, domain: object = None) -> bool:
        return self._call(
            "DoesSIPAccountExist",
            _text("DoesSIPAccountExist", "username", username, 256),
            _text("DoesSIPAccountExist", "domain", domain, 256, none=True),
        ) is True

    def GetBindings(self, username: object = None, domain: object = None) -> list[str] | None:
        value = self._call(
            "GetBindings",
            _text("GetBindings", "username", username, 256, none=True),
            _text("GetBindings", "domain", domain, 256, none=True),
        )
        if type(value) is not list:
            return None
        return [item for item in value if type(item) is str]

    def GetCurrentCallCount(self) -> int:
        value = self._call("GetCurrentCallCount")
        return value if type(value) is int else 0


def _wait_seconds(method: str, value: object) -> int:
    if type(value) is not int:
        _type_error(method, "waitSeconds", "an int", value)
    # The API keeps the seed's rule: outside 3..60 means the default of 30.
    return value if 3 <= value <= 60 else 30


def _header_name(method: str, value: object) -> str:
    name: str = _text(method, "name", value, 64)
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"sys.{method}(): {name!r} is not a valid header name")
    if name.lower() in _REFUSED_HEADERS:
        raise ValueError(f"sys.{method}(): the {name} header cannot be changed")
    return name


def _db_key(method: str, value: object) -> str:
    key: str = _text(method, "key", value, 64)
    if not key:
        raise ValueError(f"sys.{method}(): key is empty")
    return key


# --- req: a frozen snapshot ----------------------------------------------------------


def _plain_str(value: object) -> str:
    return value if type(value) is str else ""


def _plain_opt_str(value: object) -> str | None:
    return value if type(value) is str else None


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


class Uri(_Frozen):
    """``req.URI`` and the URIs inside headers."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset(
        {"User", "UnescapedUser", "Host", "Port", "Scheme", "Parameters", "ToString"}
    )
    __slots__ = ("User", "UnescapedUser", "Host", "Port", "Scheme", "Parameters", "_text")
    _text: str

    def __init__(self, data: Mapping[str, object]) -> None:
        user = _plain_str(data.get("User"))
        port = data.get("Port")
        scheme = _plain_str(data.get("Scheme")) or "sip"
        host = _plain_str(data.get("Host"))
        parameters = _plain_str(data.get("Parameters"))
        text = _plain_str(data.get("Text"))
        if not text:
            text = f"{scheme}:{user + '@' if user else ''}{host}"
            text += f":{port}" if type(port) is int else ""
            text += f";{parameters}" if parameters else ""
        _set(
            self,
            User=user,
            UnescapedUser=_plain_str(data.get("UnescapedUser")) or user,
            Host=host,
            Port=port if type(port) is int else None,
            Scheme=scheme,
            Parameters=parameters,
            _text=text,
        )

    def ToString(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<URI {self._text}>"

    def _label(self) -> str:
        return "req.URI"


class FromHeader(_Frozen):
    """``req.Header.From``."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset({"FromName", "FromURI", "FromTag", "ToString"})
    __slots__ = ("FromName", "FromURI", "FromTag", "_text")
    _text: str

    def __init__(self, data: Mapping[str, object]) -> None:
        uri = Uri(_mapping(data.get("URI")))
        name = _plain_str(data.get("Name"))
        tag = _plain_str(data.get("Tag"))
        text = _plain_str(data.get("Text")) or _name_addr(name, uri, tag)
        _set(self, FromName=name, FromURI=uri, FromTag=tag, _text=text)

    def ToString(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<From {self._text}>"


class ToHeader(_Frozen):
    """``req.Header.To``."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset({"ToName", "ToURI", "ToTag", "ToString"})
    __slots__ = ("ToName", "ToURI", "ToTag", "_text")
    _text: str

    def __init__(self, data: Mapping[str, object]) -> None:
        uri = Uri(_mapping(data.get("URI")))
        name = _plain_str(data.get("Name"))
        tag = _plain_str(data.get("Tag"))
        text = _plain_str(data.get("Text")) or _name_addr(name, uri, tag)
        _set(self, ToName=name, ToURI=uri, ToTag=tag, _text=text)

    def ToString(self) -> str:
        return self._text

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"<To {self._text}>"


def _name_addr(name: str, uri: Uri, tag: str) -> str:
    text = f'"{name}" <{uri.ToString()}>' if name else f"<{uri.ToString()}>"
    return text + (f";tag={tag}" if tag else "")


class Headers(_Frozen):
    """``req.Header``."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset(
        {"From", "To", "CallId", "CSeq", "Contact", "UserAgent", "UnknownHeaders", "Get"}
    )
    __slots__ = ("From", "To", "CallId", "CSeq", "Contact", "UserAgent", "UnknownHeaders", "_all")
    _all: tuple[tuple[str, str], ...]

    def __init__(self, data: Mapping[str, object]) -> None:
        unknown = data.get("UnknownHeaders")
        everything = data.get("All")
        pairs: list[tuple[str, str]] = []
        if isinstance(everything, list | tuple):
            for item in everything:
                if isinstance(item, list | tuple) and len(item) == 2:
                    name, value = item
                    if type(name) is str and type(value) is str:
                        pairs.append((name.lower(), value))
        cseq = data.get("CSeq")
        _set(
            self,
            From=FromHeader(_mapping(data.get("From"))),
            To=ToHeader(_mapping(data.get("To"))),
            CallId=_plain_str(data.get("CallId")),
            CSeq=cseq if type(cseq) is int else 0,
            Contact=_plain_str(data.get("Contact")),
            UserAgent=_plain_str(data.get("UserAgent")),
            UnknownHeaders=tuple(
                h for h in (unknown if isinstance(unknown, list | tuple) else ()) if type(h) is str
            ),
            _all=tuple(pairs),
        )

    def Get(self, name: object) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        if type(name) is not str:
            raise TypeError(f"req.Header.Get(): name must be a str, not {_kind(name)}")
        wanted = name.lower()
        for header, value in self._all:
            if header == wanted:
                return value
        return None

    def __repr__(self) -> str:
        return "<req.Header>"

    def _label(self) -> str:
        return "req.Header"


class Request(_Frozen):
    """``req``: the request that started the execution.

    Built lazily: most dialplans read two or three fields, and a snapshot of every
    header object for every execution would cost more than the script itself.  The
    parts are created from the (private, never exposed) plain mapping on first read
    and never change afterwards.
    """

    PUBLIC: ClassVar[frozenset[str]] = frozenset({"Method", "Body", "URI", "Header"})
    __slots__ = ("_data", "_uri", "_header")
    _data: Mapping[str, object]
    _uri: Uri | None
    _header: Headers | None

    def __init__(self, data: Mapping[str, object]) -> None:
        _set(self, _data=data, _uri=None, _header=None)

    @property
    def Method(self) -> str:
        return _plain_str(self._data.get("Method"))

    @property
    def Body(self) -> str:
        return _plain_str(self._data.get("Body"))

    @property
    def URI(self) -> Uri:
        uri = self._uri
        if uri is None:
            uri = Uri(_mapping(self._data.get("URI")))
            object.__setattr__(self, "_uri", uri)
        return uri

    @property
    def Header(self) -> Headers:
        header = self._header
        if header is None:
            header = Headers(_mapping(self._data.get("Header")))
            object.__setattr__(self, "_header", header)
        return header

    def __str__(self) -> str:
        return f"{self.Method} {self.URI.ToString()}"

    def __repr__(self) -> str:
        return f"<req {self.Method} {self.URI.ToString()}>"


# --- re: RE2 behind a small module-like object ------------------------------------------


class Match:
    """A match: plain strings and spans, copied out of the engine."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset({"group", "groups", "start", "end", "span"})
    __slots__ = ("_groups", "_spans", "_names")
    _groups: tuple[str | None, ...]
    _spans: tuple[tuple[int, int], ...]
    _names: dict[str, int]

    def __init__(
        self,
        groups: tuple[str | None, ...],
        spans: tuple[tuple[int, int], ...],
        names: Mapping[str, int],
    ) -> None:
        _set(self, _groups=groups, _spans=spans, _names=dict(names))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError("match objects are read-only")

    def _index(self, group: object) -> int:
        if type(group) is int and 0 <= group < len(self._groups):
            return group
        if type(group) is str and group in self._names:
            return self._names[group]
        raise IndexError("no such group")

    def group(self, *groups: object) -> object:
        if not groups:
            return self._groups[0]
        if len(groups) == 1:
            return self._groups[self._index(groups[0])]
        return tuple(self._groups[self._index(g)] for g in groups)

    def groups(self, default: object = None) -> tuple[object, ...]:
        return tuple(default if g is None else g for g in self._groups[1:])

    def start(self, group: object = 0) -> int:
        return self._spans[self._index(group)][0]

    def end(self, group: object = 0) -> int:
        return self._spans[self._index(group)][1]

    def span(self, group: object = 0) -> tuple[int, int]:
        return self._spans[self._index(group)]

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<re.Match span={self._spans[0]!r} match={self._groups[0]!r}>"


class RegexCache:
    """Compiled RE2 patterns of one worker (host side; scripts never see it)."""

    __slots__ = ("_compiled", "_options", "_size")

    def __init__(self, size: int = 256) -> None:
        options = re2.Options()
        options.log_errors = False  # errors become ValueErrors, not stderr noise
        self._options = options
        self._compiled: dict[tuple[str, int], Any] = {}
        self._size = size

    def get(self, pattern: str, flags: int) -> Any:
        key = (pattern, flags)
        found = self._compiled.get(key)
        if found is None:
            prefix = "".join(
                letter for bit, letter in ((2, "i"), (8, "m"), (16, "s")) if flags & bit
            )
            text = f"(?{prefix}){pattern}" if prefix else pattern
            try:
                found = re2.compile(text, options=self._options)
            except re2.error as exc:
                detail = exc.args[0] if exc.args else "invalid"
                if isinstance(detail, bytes):
                    detail = detail.decode(errors="replace")
                raise ValueError(f"re: invalid regular expression: {detail}") from None
            if len(self._compiled) >= self._size:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = found
        return found


class Regex:
    """``re``: match, search, fullmatch, sub, split, findall, escape (linear time)."""

    PUBLIC: ClassVar[frozenset[str]] = frozenset(
        {"match", "search", "fullmatch", "sub", "split", "findall", "escape",
         "I", "IGNORECASE", "M", "MULTILINE", "S", "DOTALL"}
    )
    __slots__ = ("_cache", "_pattern_chars", "_subject_chars", "_value_chars")
    _cache: RegexCache
    _pattern_chars: int
    _subject_chars: int
    _value_chars: int
    I = IGNORECASE = 2  # noqa: E741 - the stdlib re spelling
    M = MULTILINE = 8
    S = DOTALL = 16

    def __init__(self, cache: RegexCache, limits: Limits) -> None:
        _set(
            self,
            _cache=cache,
            _pattern_chars=limits.regex_pattern_chars,
            _subject_chars=limits.regex_subject_chars,
            _value_chars=limits.value_bytes,
        )

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise TypeError("re is read-only")

    def __repr__(self) -> str:
        return "<re (RE2)>"

    def _compile(self, function: str, pattern: object, subject: object, flags: object) -> Any:
        if type(pattern) is not str:
            raise TypeError(f"re.{function}(): pattern must be a str, not {_kind(pattern)}")
        if type(subject) is not str:
            raise TypeError(f"re.{function}(): string must be a str, not {_kind(subject)}")
        if type(flags) is not int:
            raise TypeError(f"re.{function}(): flags must be an int, not {_kind(flags)}")
        if len(pattern) > self._pattern_chars:
            raise ValueError(f"re.{function}(): pattern is longer than {self._pattern_chars} characters")
        if len(subject) > self._subject_chars:
            raise ValueError(f"re.{function}(): string is longer than {self._subject_chars} characters")
        return self._cache.get(pattern, flags & (2 | 8 | 16))

    @staticmethod
    def _wrap(found: Any) -> Match | None:
        if found is None:
            return None
        count = found.re.groups
        groups = tuple(found.group(i) for i in range(count + 1))
        spans = tuple(found.span(i) for i in range(count + 1))
        return Match(groups, spans, found.re.groupindex)

    def match(self, pattern: object, string: object, flags: object = 0) -> Match | None:
        return self._wrap(self._compile("match", pattern, string, flags).match(string))

    def search(self, pattern: object, string: object, flags: object = 0) -> Match | None:
        return self._wrap(self._compile("search", pattern, string, flags).search(string))

    def fullmatch(self, pattern: object, string: object, flags: object = 0) -> Match | None:
        return self._wrap(self._compile("fullmatch", pattern, string, flags).fullmatch(string))

    def findall(self, pattern: object, string: object, flags: object = 0) -> list[object]:
        return list(self._compile("findall", pattern, string, flags).findall(string))

    def split(self, pattern: object, string: object, maxsplit: object = 0, flags: object = 0) -> list[object]:
        if type(maxsplit) is not int:
            raise TypeError(f"re.split(): maxsplit must be an int, not {_kind(maxsplit)}")
        return list(self._compile("split", pattern, string, flags).split(string, maxsplit))

    def sub(self, pattern: object, repl: object, string: object, count: object = 0, flags: object = 0) -> str:
        regex = self._compile("sub", pattern, string, flags)
        if type(repl) is not str:
            raise TypeError(f"re.sub(): repl must be a str, not {_kind(repl)}")
        if type(count) is not int:
            raise TypeError(f"re.sub(): count must be an int, not {_kind(count)}")
        # Every position of the subject can match (empty pattern): bound the result
        # before the engine builds it.
        if (len(string) + 1) * (len(repl) + 1) + len(string) > self._value_chars:  # type: ignore[arg-type]
            raise ValueError("re.sub(): the result could be too large")
        try:
            result: str = regex.sub(repl, string, count)
        except (re2.error, IndexError) as exc:
            raise ValueError(f"re.sub(): invalid replacement: {exc}") from None
        return result

    def escape(self, string: object) -> str:
        if type(string) is not str:
            raise TypeError(f"re.escape(): string must be a str, not {_kind(string)}")
        if len(string) > self._pattern_chars:
            raise ValueError(f"re.escape(): string is longer than {self._pattern_chars} characters")
        return stdlib_re.escape(string)
