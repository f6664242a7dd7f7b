"""Following a SIP conversation on a stream, without touching it.

:class:`SIPInspector` is fed the bytes of one direction of one connection,
in whatever pieces they arrive, and returns what they said: keep-alives,
requests and responses with the few headers ocsbal needs.  It does no I/O
and knows nothing of sockets or reactors (the h11 way); the relay forwards
every byte before, and whatever, the inspector makes of it.
:class:`Registrations` turns the events of both directions of a connection
into what its registrations say of how long it may stay quiet.

Framing follows RFC 3261 §7.5 and §18.3 for stream transports: CRLFs before
a start line are skipped, the header block ends at the first empty line,
and the body is exactly ``Content-Length`` bytes, which are counted and
skipped, never kept.  A message without Content-Length is taken to have no
body: §18.3 makes the header mandatory on streams, and a message that
omits it is almost always one without a body, as SIP proxies assume too.

Keep-alives (RFC 5626 §3.5.1, §4.4.1) are CRLFs between messages, read by
the direction they travel in: the client pings with a double CRLF, the
server answers with a single one.  On the client's side each double CRLF
is a :class:`Ping`, and an odd CRLF left before a message is the leading
whitespace §7.5 allows, so no event.  On the server's side every CRLF is a
:class:`Pong`, reported as soon as it arrives, because a pong is the one
sign of life a quiet server gives and must not wait for the next message.

On anything it cannot frame or parse, or a header block over the cap, the
inspector gives up for good: it returns one :class:`GaveUp` and from then
on ignores its input.  The reasons are short and stable, fit for a metric
label: ``bad-keep-alive`` (a CR or LF between messages that is not part of
a CRLF), ``bad-start-line`` (neither a request nor a status line; binary
data, such as TLS on a ``sip`` port, fails at its first byte),
``bad-header`` (a header line without a name and colon, or a folded line
with nothing to continue), ``bad-content-length`` (not a number, beyond
:data:`MAX_CONTENT_LENGTH`, or given twice differently) and
``header-too-large``.
"""

from __future__ import annotations

import functools
import re
from collections import Counter

import attrs

__all__ = [
    "DEFAULT_EXPIRES",
    "MAX_CONTACTS",
    "MAX_CONTENT_LENGTH",
    "MAX_FIELDS",
    "MAX_HEADER_BYTES",
    "METHODS",
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
    "SIPTally",
]

#: The largest header block followed, its closing empty line included.
MAX_HEADER_BYTES = 64 * 1024

#: The largest body length believed.
MAX_CONTENT_LENGTH = 2**31 - 1

#: The most header lines read from one message, of those ocsbal reads
#: (Call-ID, CSeq, From, To, Contact, Expires, Content-Length); any after
#: them are not looked at, but for where the body ends.
MAX_FIELDS = 64

#: The most Contact values read from one message; any after them are not
#: looked at.  A registrar lists every binding of an address of record in
#: its 2xx, a handful for a user signed in on several devices.
MAX_CONTACTS = 32

#: The largest CSeq number and expiry (RFC 3261 §8.1.1.5, §20.19); larger
#: ones are malformed, and read as absent.
_MAX_32_BIT = 2**32 - 1

#: RFC 3261 §25.1 token: what a method and a header name are made of.
_TOKEN = rb"[-A-Za-z0-9.!%*_+`'~]"
_TOKEN_BYTES = frozenset(
    b"-.!%*_+`'~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

_CRLFS = re.compile(rb"(?:\r\n)+")
_VERSION = rb"[Ss][Ii][Pp]/2\.0"  # RFC 3261 §7.1: case-insensitive
_REQUEST_LINE = re.compile(b"(" + _TOKEN + rb"+) ([^\x00-\x20\x7f]+) " + _VERSION)
_STATUS_LINE = re.compile(
    _VERSION + rb" ([1-6][0-9][0-9]) ([^\x00-\x08\x0a-\x1f\x7f]*)"
)
# A line that is neither a header (a token and a colon) nor a continuation;
# possessive, so that it fails in linear time.
_BAD_LINE = re.compile(b"\r\n(?!" + _TOKEN + rb"++[ \t]*+:|[ \t])")
_READ_HEADER = re.compile(
    rb"\r\n(call-id|i|cseq|from|f|to|t|contact|m|expires|content-length|l)"
    rb"[ \t]*:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
#: The headers read, by their names in lower case and RFC 3261 §7.3.3
#: compact forms.
_CANONICAL = {
    b"call-id": "call-id",
    b"i": "call-id",
    b"cseq": "cseq",
    b"from": "from",
    b"f": "from",
    b"to": "to",
    b"t": "to",
    b"contact": "contact",
    b"m": "contact",
    b"expires": "expires",
    b"content-length": "content-length",
    b"l": "content-length",
}
_FOLD = re.compile(rb"\r\n[ \t]+")

_NUMBER = re.compile(r"0*([0-9]{1,10})")
_CSEQ = re.compile(r"0*([0-9]{1,10})\s+(\S+)")
_QUOTED = r'"(?:[^"\\]|\\.)*+"'
# The items of a comma-separated list: commas within a quoted string or
# <...> do not count; a quote or < that is never closed is an ordinary
# character.  Every scan below runs in linear time: each pattern is
# possessive, an unclosed < is given up at the next < or >, and _ITEM
# stops at an unclosed quote rather than taking it as ordinary, because
# trying each later quote again would rescan to the end from every one
# (quadratic in the value).  None of them could close anyway: every later
# quote is one that the failed scan took as escaped (\"), so a scan from
# it reads the same characters to the same end.  _items goes on from there
# with _BARE_ITEM, which takes quotes as ordinary.
_ITEM = re.compile(r"(?:" + _QUOTED + r'|<[^<>]*+>|[^,"<]|<)++', re.DOTALL)
_BARE_ITEM = re.compile(r"(?:<[^<>]*+>|[^,<]|<)++", re.DOTALL)
_SEPARATORS = re.compile(r"[\s,]*+")
# A name-addr (groups 1 and 2: URI and parameters) or an addr-spec, whose
# parameters start at the first semicolon (groups 3 and 4; RFC 3261 §20).
_ADDRESS = re.compile(
    r"(?:" + _QUOTED + r'|[^"<])*+<([^>]*)>(.*)|([^;]*)(.*)', re.DOTALL
)
_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*([^;,\s]*)", re.IGNORECASE)
_TAG_PARAM = re.compile(r";\s*tag\s*=\s*([^;,\s]+)", re.IGNORECASE)


@attrs.frozen
class Contact:
    """One Contact value: its URI and, if given, its ``expires`` parameter."""

    uri: str
    expires: int | None = None


@attrs.frozen
class SIPHeaders:
    """The headers of a message that ocsbal reads.

    As h11 does, it keeps them as they came, and parses a value only when
    it is asked for, once: most messages are relayed without anyone asking.  A
    header that is absent, or whose value is malformed, reads as ``None``.

    :ivar fields: each header read, in order: its name (long form, lower
        case, as in :meth:`values`) and its raw value.
    :ivar content_length: the body's length; 0 when the header is absent.
    """

    fields: tuple[tuple[str, bytes], ...] = ()
    content_length: int = 0

    def values(self, name: str) -> list[str]:
        """The values of one of the headers read, decoded, unfolded, stripped.

        :param name: ``call-id``, ``cseq``, ``from``, ``to``, ``contact``,
            ``expires`` or ``content-length``.
        """
        return [_text(value) for field, value in self.fields if field == name]

    @functools.cached_property
    def call_id(self) -> str | None:
        """The Call-ID."""
        return self._first("call-id")

    @functools.cached_property
    def cseq(self) -> tuple[int, str] | None:
        """The CSeq number and method."""
        return _cseq(self._first("cseq"))

    @functools.cached_property
    def to_uri(self) -> str | None:
        """The To header's URI: the address of record of a REGISTER."""
        return _tagged(self._first("to"))[0]

    @functools.cached_property
    def to_tag(self) -> str | None:
        """The To header's tag."""
        return _tagged(self._first("to"))[1]

    @functools.cached_property
    def from_uri(self) -> str | None:
        """The From header's URI."""
        return _tagged(self._first("from"))[0]

    @functools.cached_property
    def from_tag(self) -> str | None:
        """The From header's tag."""
        return _tagged(self._first("from"))[1]

    @functools.cached_property
    def contacts(self) -> tuple[Contact, ...]:
        """The Contact values but ``*``, in order, from one line or many.

        At most :data:`MAX_CONTACTS` are read.
        """
        return tuple(_contact(item) for item in self._contact_items if item != "*")

    @functools.cached_property
    def contact_star(self) -> bool:
        """Whether a Contact is ``*``: remove every binding."""
        return "*" in self._contact_items

    @functools.cached_property
    def expires(self) -> int | None:
        """The Expires header, in seconds."""
        return _number(self._first("expires"), _MAX_32_BIT)

    def _first(self, name: str) -> str | None:
        for field, value in self.fields:
            if field == name:
                return _text(value)
        return None

    @functools.cached_property
    def _contact_items(self) -> list[str]:
        items: list[str] = []
        for field, value in self.fields:
            if field == "contact":
                items += _items(_text(value), MAX_CONTACTS - len(items))
                if len(items) == MAX_CONTACTS:
                    break
        return items


@attrs.frozen
class Ping:
    """A client's double CRLF between messages: a keep-alive."""


@attrs.frozen
class Pong:
    """A server's CRLF between messages: the answer to a keep-alive."""


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

# Keep-alives come by the thousand on a hostile stream; they carry nothing.
_PING = Ping()
_PONG = Pong()


class _GiveUpError(Exception):
    """Raised inside the inspector; becomes a :class:`GaveUp` event."""


class SIPInspector:
    """Follows one direction of a SIP stream; see the module docstring.

    Whatever the pieces the stream is fed in, the events are the same.  The
    inspector keeps only an incomplete header block between calls, and
    never one of ``max_header_bytes`` or more: a header block, its closing
    empty line included, may be at most that long.

    :param max_header_bytes: the longest header block followed.
    :param from_server: whether this is the server's direction, whose CRLFs
        between messages are pongs, rather than the client's, whose double
        CRLFs are pings.
    :ivar gave_up: why inspection stopped, or ``None`` while it goes on.
    """

    # One per direction of every SIP connection: no per-instance dict.
    __slots__ = (
        "_crlf",
        "_skip",
        "_tail",
        "from_server",
        "gave_up",
        "max_header_bytes",
    )

    def __init__(
        self, max_header_bytes: int = MAX_HEADER_BYTES, *, from_server: bool = False
    ) -> None:
        self.max_header_bytes = max_header_bytes
        self.from_server = from_server
        self.gave_up: str | None = None
        #: The start of an incomplete header block (or a CR awaiting its LF).
        self._tail = bytearray()
        #: Body bytes still to skip.
        self._skip = 0
        #: On the client's side, a CRLF that may be half of a ping.
        self._crlf = False

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the stream; return what they completed."""
        if self.gave_up is not None:
            return []
        if self._skip >= len(data):  # all body (or nothing)
            self._skip -= len(data)
            return []
        start, self._skip = self._skip, 0
        buffer: bytes | bytearray = data
        searched = 0
        tail = self._tail
        if tail:  # then no body was being skipped, and start is 0
            # The block's end was not in the tail; look from its last 3 bytes.
            searched = len(tail) - 3
            tail += data
            buffer = tail
        events: list[Event] = []
        try:
            end = self._frame(buffer, start, searched, events)
        except _GiveUpError as e:
            self.gave_up = str(e)
            self._tail = bytearray()
            events.append(GaveUp(self.gave_up))
            return events
        if end == len(buffer):
            self._tail = bytearray()
        elif buffer is tail:
            del tail[:end]
        else:
            self._tail = bytearray(data[end:])
        return events

    def _frame(
        self, buffer: bytes | bytearray, pos: int, searched: int, events: list[Event]
    ) -> int:
        """Read the messages and keep-alives in ``buffer`` from ``pos``.

        :param searched: where in ``buffer`` the end of the first header
            block may be; before it, it has been looked for in vain.
        :return: where the unread bytes start.
        """
        size = len(buffer)
        while pos < size:
            first = buffer[pos]
            if first in b"\r\n":
                crlfs = _CRLFS.match(buffer, pos)
                if crlfs is not None:
                    self._keepalives((crlfs.end() - pos) // 2, events)
                    pos = crlfs.end()
                elif first == 13 and pos + 1 == size:
                    break  # a CR whose LF is yet to come
                else:
                    raise _GiveUpError("bad-keep-alive")
                continue
            # A message starts: a CRLF left over was leading whitespace.
            self._crlf = False
            if first not in _TOKEN_BYTES:
                raise _GiveUpError("bad-start-line")
            end = buffer.find(b"\r\n\r\n", max(pos, searched))
            if end < 0 and size - pos >= self.max_header_bytes:
                raise _GiveUpError("header-too-large")
            if end < 0:
                break
            if end + 4 - pos > self.max_header_bytes:
                raise _GiveUpError("header-too-large")
            message = _message(bytes(buffer[pos:end]))
            events.append(message)
            pos = end + 4 + message.headers.content_length
            searched = 0
        if pos > size:
            self._skip = pos - size
            return size
        return pos

    def _keepalives(self, crlfs: int, events: list[Event]) -> None:
        """Report ``crlfs`` CRLFs seen between messages."""
        if self.from_server:
            events += [_PONG] * crlfs
            return
        crlfs += self._crlf
        events += [_PING] * (crlfs // 2)
        self._crlf = bool(crlfs % 2)


def _message(head: bytes) -> Request | Response:
    """Parse a header block (without its closing empty line)."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    start, block = head[:line_end], head[line_end:]
    request = _REQUEST_LINE.fullmatch(start)
    if request is not None:
        method, uri = request.groups()
        return Request(
            method.decode("ascii"), uri.decode("utf-8", "replace"), _headers(block)
        )
    status = _STATUS_LINE.fullmatch(start)
    if status is not None:
        code, reason = status.groups()
        return Response(int(code), reason.decode("utf-8", "replace"), _headers(block))
    raise _GiveUpError("bad-start-line")


def _headers(block: bytes) -> SIPHeaders:
    """Read the header lines, each starting with its CRLF."""
    if block.startswith((b"\r\n ", b"\r\n\t")) or _BAD_LINE.search(block):
        raise _GiveUpError("bad-header")
    found = _READ_HEADER.findall(block)
    fields = tuple(
        [(_CANONICAL[name.lower()], value) for name, value in found[:MAX_FIELDS]]
    )
    if len(found) <= MAX_FIELDS:
        raw = {value for name, value in fields if name == "content-length"}
    else:  # only where the body ends is read from them all
        raw = set(_CONTENT_LENGTH.findall(block))
    if len(raw) > MAX_FIELDS:
        raise _GiveUpError("bad-content-length")
    # Given twice it must say the same, or where the body ends is unknowable.
    lengths = {_text(value) for value in raw} or {"0"}
    length = _number(lengths.pop(), MAX_CONTENT_LENGTH) if len(lengths) == 1 else None
    if length is None:
        raise _GiveUpError("bad-content-length")
    return SIPHeaders(fields, length)


def _text(value: bytes) -> str:
    """A raw header value, unfolded (RFC 3261 §7.3.1), decoded and stripped."""
    if b"\r\n" in value:
        value = _FOLD.sub(b" ", value)
    return value.decode("utf-8", "replace").strip()


def _number(text: str | None, limit: int) -> int | None:
    """A whole number of at most ``limit``, or ``None`` if ``text`` is not."""
    digits = _NUMBER.fullmatch(text or "")
    if digits is None:
        return None
    value = int(digits[1])
    return value if value <= limit else None


def _cseq(text: str | None) -> tuple[int, str] | None:
    cseq = _CSEQ.fullmatch(text or "")
    if cseq is None:
        return None
    number = int(cseq[1])
    return (number, cseq[2]) if number <= _MAX_32_BIT else None


def _items(value: str, limit: int) -> list[str]:
    """The first ``limit`` items of a comma-separated header value.

    Commas within <...> and "..." do not count; empty items are left out.
    """
    if "," not in value:  # the usual case, and much the cheapest
        return [value][:limit] if value else []
    items: list[str] = []
    item, start, pos, size = _ITEM, 0, 0, len(value)
    while len(items) < limit:
        run = item.match(value, pos)
        if run is not None:
            pos = run.end()
        if pos < size and value[pos] == '"':  # a quote that never closes
            item, pos = _BARE_ITEM, pos + 1
            continue
        text = value[start:pos].strip()  # at a comma, or the end
        if text:
            items.append(text)
        if pos >= size:
            break
        # Empty items count for nothing, so a run of commas costs one step.
        separators = _SEPARATORS.match(value, pos)
        assert separators is not None  # it matches the empty string too
        start = pos = separators.end()
    return items


def _address(value: str) -> tuple[str, str]:
    """A name-addr's or addr-spec's URI, and the parameters that follow it."""
    address = _ADDRESS.match(value)
    assert address is not None  # its second branch matches anything
    uri, params, spec, spec_params = address.groups()
    if uri is None:
        uri, params = spec, spec_params
    return uri.strip(), params


def _tagged(value: str | None) -> tuple[str | None, str | None]:
    """The URI and tag of a To or From header."""
    if value is None:
        return None, None
    uri, params = _address(value)
    tag = _TAG_PARAM.search(params)
    return uri, tag[1] if tag else None


def _contact(item: str) -> Contact:
    uri, params = _address(item)
    expires = _EXPIRES_PARAM.search(params)
    return Contact(uri, _number(expires[1], _MAX_32_BIT) if expires else None)


#: The expiry a registrar grants when nothing says otherwise (RFC 3261
#: §10.2.1.1).
DEFAULT_EXPIRES = 3600


@attrs.frozen
class _Pending:
    """A REGISTER awaiting its final response.

    :ivar aor: the address of record, from its To header.
    :ivar asked: each Contact's URI and the expiry it asked for, if it did.
    :ivar star: whether it was ``Contact: *``, removing every binding.
    """

    aor: str
    asked: tuple[tuple[str, int | None], ...]
    star: bool


@attrs.define
class Registrations:
    """What one connection's SIP says about its registrations.

    Fed the inspector's events of both directions with the time they were
    seen (it has no clock of its own), it matches each REGISTER with its
    final response by Call-ID and CSeq and keeps when each binding the
    REGISTER named expires (RFC 3261 §10.2.1, §10.3).  A Contact that asked
    for 0 is removed; any other is granted the ``expires`` of the same
    Contact in the 2xx, else the 2xx's Expires header, else what it asked
    (its ``expires``, else the REGISTER's Expires header), else
    :data:`DEFAULT_EXPIRES`.  ``Contact: *`` removes the address of
    record's bindings.  A REGISTER without a Contact only asks which
    bindings there are, and changes nothing; nor does any other response.

    :param max_pending: REGISTERs awaiting a response that are remembered;
        beyond it the oldest is forgotten, so a client cannot grow it.
    :param max_bindings: bindings remembered; beyond it the one that
        expires first is forgotten, for the same reason.
    :ivar keepalives: keep-alive pings and pongs seen.
    :ivar last_message: the last request's method and URI, or response's
        status, reason and CSeq method.
    """

    max_pending: int = 16
    max_bindings: int = 64
    keepalives: int = attrs.field(init=False, default=0)
    last_message: str | None = attrs.field(init=False, default=None)
    _pending: dict[tuple[str, int], _Pending] = attrs.field(init=False, factory=dict)
    #: When each binding expires, by address of record and Contact URI.
    _expiries: dict[tuple[str, str], float] = attrs.field(init=False, factory=dict)
    #: Whether the last :meth:`lapsed` found a missed refresh.
    _lapsed: bool = attrs.field(init=False, default=False)

    def from_client(self, event: Event, now: float) -> None:  # noqa: ARG002
        """Count an event of the client's direction, seen at ``now``."""
        if isinstance(event, Ping | Pong):
            self.keepalives += 1
        elif isinstance(event, Request):
            self.last_message = f"{event.method} {event.uri}"
            headers = event.headers
            if not (
                event.method == "REGISTER"
                and headers.call_id
                and headers.cseq
                and headers.to_uri
                and (headers.contacts or headers.contact_star)
            ):
                return
            asked = tuple(
                (c.uri, headers.expires if c.expires is None else c.expires)
                for c in headers.contacts
            )
            key = (headers.call_id, headers.cseq[0])
            self._pending.pop(key, None)  # a retransmission counts as the newest
            self._pending[key] = _Pending(headers.to_uri, asked, headers.contact_star)
            if len(self._pending) > self.max_pending:
                del self._pending[next(iter(self._pending))]

    def from_server(self, event: Event, now: float) -> None:
        """Count an event of the server's direction, seen at ``now``."""
        if isinstance(event, Ping | Pong):
            self.keepalives += 1
        elif isinstance(event, Response):
            headers, cseq = event.headers, event.headers.cseq
            self.last_message = (
                f"{event.status} {event.reason} ({cseq[1] if cseq else '?'})"
            )
            if event.status < 200 or not (
                cseq and cseq[1] == "REGISTER" and headers.call_id
            ):
                return
            pending = self._pending.pop((headers.call_id, cseq[0]), None)
            if pending is None or event.status >= 300:
                return
            if pending.star:
                for binding in [b for b in self._expiries if b[0] == pending.aor]:
                    del self._expiries[binding]
            # The first time a 2xx lists a Contact is what it says of it.
            answered = {c.uri: c.expires for c in reversed(headers.contacts)}
            for uri, asked in pending.asked:
                granted = _granted(asked, answered.get(uri), headers.expires)
                binding = (pending.aor, uri)
                if not granted:
                    self._expiries.pop(binding, None)
                    continue
                if (
                    binding not in self._expiries
                    and len(self._expiries) >= self.max_bindings
                ):
                    first = min(self._expiries, key=self._expiries.__getitem__)
                    del self._expiries[first]
                self._expiries[binding] = now + granted

    @property
    def bindings(self) -> dict[str, float]:
        """When each registered address of record's last binding expires."""
        aors: dict[str, float] = {}
        for (aor, _), expiry in self._expiries.items():
            aors[aor] = max(expiry, aors.get(aor, expiry))
        return aors

    @property
    def expiry(self) -> float | None:
        """When the last registration on this connection expires, if any."""
        return max(self._expiries.values(), default=None)

    def missed_refresh(self, now: float, grace: float) -> bool:
        """Whether a registration expired ``grace`` ago without a refresh."""
        expiry = self.expiry
        return expiry is not None and now > expiry + grace

    def lapsed(self, now: float, grace: float) -> bool:
        """Whether a refresh was missed since this was last asked.

        True once for each lapse: a refresh answered afterwards ends it (as
        does the last binding's removal), and a later lapse is a new one.
        """
        missed = self.missed_refresh(now, grace)
        new, self._lapsed = missed and not self._lapsed, missed
        return new


def _granted(asked: int | None, answered: int | None, expires: int | None) -> int:
    """How long a 2xx keeps a binding.

    :param asked: the expiry the REGISTER asked for the binding, if any.
    :param answered: the 2xx's ``expires`` parameter of the binding, if any.
    :param expires: the 2xx's Expires header, if any.
    """
    if asked == 0:  # a removal, which no registrar turns into a binding
        return 0
    return next(
        value
        for value in (answered, expires, asked, DEFAULT_EXPIRES)
        if value is not None
    )


#: The methods counted by name (RFC 3261 and its extensions, and the two of
#: Microsoft's that OCS speaks); any other is counted as ``other``, so that
#: a client cannot make up metric labels.
METHODS = frozenset(
    [
        *("ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS"),
        *("PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE"),
        *("SERVICE", "BENOTIFY"),
    ]
)


@attrs.define
class SIPTally:
    """What the SIP of many connections said, counted.

    :ivar requests: requests, by method (:data:`METHODS`, else ``other``).
    :ivar responses: responses, by class: ``1xx`` to ``6xx``.
    :ivar keepalives: keep-alives, ``ping`` or ``pong``.
    :ivar gave_up: inspections given up, by reason.
    """

    requests: Counter[str] = attrs.Factory(Counter)
    responses: Counter[str] = attrs.Factory(Counter)
    keepalives: Counter[str] = attrs.Factory(Counter)
    gave_up: Counter[str] = attrs.Factory(Counter)

    def count(self, event: Event) -> None:
        """Count one event of an inspector."""
        if isinstance(event, Request):
            self.requests[event.method if event.method in METHODS else "other"] += 1
        elif isinstance(event, Response):
            self.responses[f"{event.status // 100}xx"] += 1
        elif isinstance(event, GaveUp):
            self.gave_up[event.reason] += 1
        else:
            self.keepalives["ping" if isinstance(event, Ping) else "pong"] += 1
