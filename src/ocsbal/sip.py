"""Following a SIP conversation on a stream, without touching it.

:class:`SIPInspector` is fed the bytes of one direction of one connection,
in whatever pieces they arrive, and returns what they said: keep-alives,
requests and responses with the few headers ocsbal needs.  It does no I/O
and knows nothing of sockets or reactors (the h11 way); the relay forwards
every byte before and whatever the inspector makes of it.

Framing follows RFC 3261 §7.5 and §18.3 for stream transports: CRLFs before
a start line are skipped, the header block ends at the first empty line,
and the body is exactly ``Content-Length`` bytes, which are counted and
skipped, never kept.

Keep-alives (RFC 5626 §3.5.1, §4.4.1) are recognised between messages: each
double CRLF is a :class:`Ping`; a single CRLF is a :class:`Pong`, reported
once the next byte shows that it was not the first half of a ping.

On anything it cannot frame or parse, or a header block over the cap, the
inspector gives up for good: it returns one :class:`GaveUp` with a short
reason (fit for a metric label) and from then on ignores its input.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "Contact",
    "Event",
    "GaveUp",
    "Ping",
    "Pong",
    "Registrations",
    "Request",
    "Response",
    "SIPHeaders",
    "SIPInspector",
]

#: The largest header block followed before giving up.
MAX_HEADER_BYTES = 64 * 1024

#: The largest body length believed.
MAX_CONTENT_LENGTH = 2**31 - 1

#: RFC 3261 §7.3.3 compact forms of the headers ocsbal reads.
_COMPACT = {
    b"i": b"call-id",
    b"f": b"from",
    b"t": b"to",
    b"m": b"contact",
    b"l": b"content-length",
}

#: The headers ocsbal reads; the others are checked for form only.
_READ = frozenset(
    [b"call-id", b"cseq", b"from", b"to", b"contact", b"expires", b"content-length"]
)

_TOKEN = rb"[A-Za-z0-9.!%*_+`'~-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) SIP/2\.0\Z")
_STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9]) ([^\x00-\x08\x0a-\x1f\x7f]*)\Z")
_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*([0-9]+)", re.IGNORECASE)
_TAG_PARAM = re.compile(r";\s*tag\s*=\s*([^;\s]+)", re.IGNORECASE)


@attrs.frozen
class Contact:
    """One Contact value: its URI and, if given, its ``expires`` parameter."""

    uri: str
    expires: int | None = None


@attrs.frozen
class SIPHeaders:
    """The headers of a message that ocsbal reads, parsed.

    :ivar call_id: the Call-ID.
    :ivar cseq: the CSeq number and method.
    :ivar to_uri: the To header's URI, the address of record of a REGISTER.
    :ivar from_uri: the From header's URI.
    :ivar from_tag: the From header's tag.
    :ivar contacts: the Contact values, in order.
    :ivar contact_star: whether Contact is ``*`` (remove every binding).
    :ivar expires: the Expires header.
    :ivar content_length: the body's length.
    """

    call_id: str | None = None
    cseq: tuple[int, str] | None = None
    to_uri: str | None = None
    from_uri: str | None = None
    from_tag: str | None = None
    contacts: tuple[Contact, ...] = ()
    contact_star: bool = False
    expires: int | None = None
    content_length: int = 0


@attrs.frozen
class Ping:
    """A double CRLF between messages: a client's keep-alive."""


@attrs.frozen
class Pong:
    """A single CRLF between messages: a server's keep-alive answer."""


@attrs.frozen
class Request:
    """A request's start line and headers."""

    method: str
    uri: str
    headers: SIPHeaders


@attrs.frozen
class Response:
    """A response's status line and headers."""

    status: int
    reason: str
    headers: SIPHeaders


@attrs.frozen
class GaveUp:
    """The inspector stopped following the stream, for ``reason``."""

    reason: str


Event = Ping | Pong | Request | Response | GaveUp


class _GiveUpError(Exception):
    """Raised inside the inspector; becomes a :class:`GaveUp` event."""


class SIPInspector:
    """Follows one direction of a SIP stream; see the module docstring.

    :param max_header_bytes: the largest header block followed.
    """

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.max_header_bytes = max_header_bytes
        #: Why inspection stopped, or ``None`` while it goes on.
        self.gave_up: str | None = None
        self._buffer = b""
        #: Body bytes still to skip.
        self._body = 0
        #: A CRLF seen between messages, waiting for the next byte.
        self._lone_crlf = False
        #: Where to resume looking for the end of the header block.
        self._searched = 0

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the stream; return what they completed."""
        if self.gave_up is not None:
            return []
        events: list[Event] = []
        if self._body:
            skipped = min(self._body, len(data))
            self._body -= skipped
            data = data[skipped:]
        self._buffer += data
        try:
            self._parse(events)
        except _GiveUpError as e:
            self.gave_up = str(e)
            self._buffer = b""
            events.append(GaveUp(self.gave_up))
        return events

    def _parse(self, events: list[Event]) -> None:
        while self._buffer and not self._body:
            if not self._searched and not self._between(events):
                return
            end = self._buffer.find(b"\r\n\r\n", self._searched)
            if end < 0:
                if len(self._buffer) > self.max_header_bytes:
                    raise _GiveUpError("header-too-large")
                self._searched = max(0, len(self._buffer) - 3)
                return
            if end > self.max_header_bytes:
                raise _GiveUpError("header-too-large")
            head, rest = self._buffer[:end], self._buffer[end + 4 :]
            self._searched = 0
            event = _message(head)
            events.append(event)
            skipped = min(event.headers.content_length, len(rest))
            self._body = event.headers.content_length - skipped
            self._buffer = rest[skipped:]

    def _between(self, events: list[Event]) -> bool:
        """Consume keep-alives before a message; return whether one starts."""
        stripped = self._buffer.lstrip(b"\r\n")
        run = self._buffer[: len(self._buffer) - len(stripped)]
        pairs, odd = divmod(len(run), 2)
        if run[: 2 * pairs] != b"\r\n" * pairs:
            raise _GiveUpError("bad-keep-alive")
        if odd:
            if run[-1:] != b"\r" or stripped:
                raise _GiveUpError("bad-keep-alive")
            stripped = b"\r"  # wait for its LF
        crlfs = pairs + self._lone_crlf
        events.extend(Ping() for _ in range(crlfs // 2))
        self._lone_crlf = bool(crlfs % 2)
        self._buffer = stripped
        if stripped in (b"", b"\r"):
            return False
        if self._lone_crlf:
            events.append(Pong())
            self._lone_crlf = False
        return True


def _message(head: bytes) -> Request | Response:
    """Parse a header block (without its final empty line)."""
    start, _, rest = head.partition(b"\r\n")
    headers = _headers(rest)
    request = _REQUEST_LINE.match(start)
    if request is not None:
        method, uri = (part.decode("ascii", "replace") for part in request.groups())
        return Request(method, uri, headers)
    status = _STATUS_LINE.match(start)
    if status is not None:
        code, reason = status.groups()
        return Response(int(code), reason.decode("utf-8", "replace"), headers)
    raise _GiveUpError("bad-start-line")


def _headers(block: bytes) -> SIPHeaders:
    values: dict[bytes, list[str]] = {}
    name = b""
    for line in block.split(b"\r\n") if block else []:
        if line[:1] in (b" ", b"\t"):
            if not name:
                raise _GiveUpError("bad-header")
            # A folded line continues the previous value (RFC 3261 §7.3.1).
            if name in _READ:
                values[name][-1] += " " + line.strip().decode("utf-8", "replace")
            continue
        raw, colon, value = line.partition(b":")
        raw = raw.strip().lower()
        if not colon or not raw or b" " in raw or b"\x00" in line:
            raise _GiveUpError("bad-header")
        name = _COMPACT.get(raw, raw)
        if name in _READ:
            values.setdefault(name, []).append(value.strip().decode("utf-8", "replace"))
    return _parsed(values)


def _parsed(values: dict[bytes, list[str]]) -> SIPHeaders:
    lengths = {v.strip() for v in values.get(b"content-length", [])}
    if len(lengths) > 1:
        raise _GiveUpError("bad-content-length")
    length = lengths.pop() if lengths else "0"
    if not length.isdigit() or int(length) > MAX_CONTENT_LENGTH:
        raise _GiveUpError("bad-content-length")
    contacts = [c for v in values.get(b"contact", []) for c in _split_list(v)]
    to_uri = _first(values, b"to")
    from_value = _first(values, b"from")
    tag = _TAG_PARAM.search(_after_uri(from_value)) if from_value else None
    return SIPHeaders(
        call_id=_first(values, b"call-id"),
        cseq=_cseq(_first(values, b"cseq")),
        to_uri=_uri(to_uri) if to_uri else None,
        from_uri=_uri(from_value) if from_value else None,
        from_tag=tag.group(1) if tag else None,
        contacts=tuple(_contact(c) for c in contacts if c != "*"),
        contact_star="*" in contacts,
        expires=_whole(_first(values, b"expires")),
        content_length=int(length),
    )


def _first(values: dict[bytes, list[str]], name: bytes) -> str | None:
    found = values.get(name)
    return found[0] if found else None


def _whole(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _cseq(text: str | None) -> tuple[int, str] | None:
    number, _, method = (text or "").partition(" ")
    if not number.isdigit() or not method.strip():
        return None
    return int(number), method.strip()


def _split_list(value: str) -> list[str]:
    """Split a comma-separated header value, minding <...> and "..."."""
    if "," not in value:
        return [value.strip()] if value.strip() else []
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for char in value:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            depth += 1
        elif not quoted and char == ">":
            depth -= 1
        elif char == "," and not quoted and depth <= 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _uri(value: str) -> str:
    """The URI of a name-addr (``"x" <sip:a@b>;tag=1``) or an addr-spec."""
    if "<" in value:
        return value.partition("<")[2].partition(">")[0].strip()
    return value.partition(";")[0].strip()


def _after_uri(value: str) -> str:
    """A header value's parameters: what follows its URI."""
    if "<" in value:
        return value.partition(">")[2]
    return ";" + value.partition(";")[2] if ";" in value else ""


def _contact(value: str) -> Contact:
    expires = _EXPIRES_PARAM.search(_after_uri(value))
    return Contact(_uri(value), int(expires.group(1)) if expires else None)


#: The expiry a registrar grants when it names none (RFC 3261 §10.2.1.1).
DEFAULT_EXPIRES = 3600


@attrs.frozen
class _Pending:
    aor: str
    contacts: frozenset[str]
    unregister: bool


@attrs.define
class Registrations:
    """What one connection's SIP says about its registrations.

    Fed the inspector's events of both directions with the time they were
    seen, it matches each REGISTER with its response (Call-ID and CSeq) and
    keeps when each address of record's registration expires: the expiry a
    2xx grants to the REGISTER's own Contact, else its Expires header, else
    3600 s (RFC 3261 §10.2.1, §10.3).  An expiry of 0, or ``Contact: *``,
    ends the registration.

    :param max_pending: REGISTERs awaiting a response that are remembered;
        beyond it the oldest is forgotten, so a client cannot grow it.
    :ivar bindings: the expiry time of each registered address of record.
    :ivar keepalives: keep-alive pings and pongs seen.
    :ivar last_message: the last request's method and URI, or response's
        status and CSeq method.
    """

    max_pending: int = 16
    bindings: dict[str, float] = attrs.Factory(dict)
    keepalives: int = 0
    last_message: str | None = None
    _pending: dict[tuple[str, int], _Pending] = attrs.Factory(dict)

    def from_client(self, event: Event, now: float) -> None:  # noqa: ARG002
        """Count an event of the client's direction, seen at ``now``."""
        if isinstance(event, Ping | Pong):
            self.keepalives += 1
        elif isinstance(event, Request):
            self.last_message = f"{event.method} {event.uri}"
            headers = event.headers
            if event.method != "REGISTER" or not (headers.call_id and headers.cseq):
                return
            asked = [c.expires for c in headers.contacts] + [headers.expires]
            self._pending[headers.call_id, headers.cseq[0]] = _Pending(
                aor=headers.to_uri or event.uri,
                contacts=frozenset(c.uri for c in headers.contacts),
                unregister=headers.contact_star or 0 in asked,
            )
            while len(self._pending) > self.max_pending:
                del self._pending[next(iter(self._pending))]

    def from_server(self, event: Event, now: float) -> None:
        """Count an event of the server's direction, seen at ``now``."""
        if isinstance(event, Ping | Pong):
            self.keepalives += 1
        elif isinstance(event, Response):
            headers = event.headers
            method = headers.cseq[1] if headers.cseq else "?"
            self.last_message = f"{event.status} {event.reason} ({method})"
            if event.status < 200 or not (headers.call_id and headers.cseq):
                return
            pending = self._pending.pop((headers.call_id, headers.cseq[0]), None)
            if pending is None or not 200 <= event.status < 300:
                return
            granted = _granted(pending, event.headers)
            if pending.unregister or granted == 0:
                self.bindings.pop(pending.aor, None)
            else:
                self.bindings[pending.aor] = now + granted

    @property
    def expiry(self) -> float | None:
        """When the last registration on this connection expires, if any."""
        return max(self.bindings.values(), default=None)

    def deadline(
        self, idle_timeout: float, last_activity: float, grace: float
    ) -> float:
        """When this connection may be closed for idleness.

        ``idle_timeout`` after the last activity, but never before a live
        registration's expiry plus ``grace``.
        """
        floor = last_activity + idle_timeout
        expiry = self.expiry
        return floor if expiry is None else max(floor, expiry + grace)

    def missed_refresh(self, now: float, grace: float) -> bool:
        """Whether a registration expired ``grace`` ago without a refresh."""
        expiry = self.expiry
        return expiry is not None and now > expiry + grace


def _granted(pending: _Pending, headers: SIPHeaders) -> int:
    own = [c.expires for c in headers.contacts if c.uri in pending.contacts]
    for expires in [*own, headers.expires]:
        if expires is not None:
            return expires
    return DEFAULT_EXPIRES
