"""The inspector: frames one direction of a SIP stream into events.

See :mod:`ocsbal.sip` for what it reads and when it gives up.
"""

from __future__ import annotations

import re

import attrs

from ocsbal.sip._headers import (
    _CONTENT_LENGTH,
    _TOKEN,
    GiveUpError,
    SIPHeaders,
    content_length,
    read_headers,
)

#: The largest header block followed, its closing empty line included.
MAX_HEADER_BYTES = 64 * 1024

_TOKEN_BYTES = frozenset(
    b"-.!%*_+`'~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

_CRLFS = re.compile(rb"(?:\r\n)+")
_VERSION = rb"[Ss][Ii][Pp]/2\.0"  # RFC 3261 §7.1: case-insensitive
# A request line (group 1: the method) or a status line (group 2: the code).
_START_LINE = re.compile(
    b"("
    + _TOKEN
    + rb"++) [^\x00-\x20\x7f]++ "
    + _VERSION
    + b"|"
    + _VERSION
    + rb" ([1-6][0-9][0-9]) [^\x00-\x08\x0a-\x1f\x7f]*+"
)


@attrs.frozen
class Ping:
    """A client's double CRLF between messages: a keep-alive."""


@attrs.frozen
class Pong:
    """A server's CRLF between messages: the answer to a keep-alive."""


class _Message:
    """What a request and a response share: the head, read when asked.

    Most messages are relayed without anyone asking more of them than their
    method or status, which the inspector reads as it frames them; the
    rest is read from :attr:`head` on demand, once.

    :ivar head: the start line and the header lines, as they came, without
        the empty line that ends them.
    :ivar content_length: the body's length.
    """

    __slots__ = ("_headers", "_line", "content_length", "head")

    # Set by the subclasses' own __init__.
    head: bytes
    content_length: int
    #: Where the start line ends in ``head``.
    _line: int
    _headers: SIPHeaders | None

    @property
    def headers(self) -> SIPHeaders:
        """The headers ocsbal reads, and any other on request."""
        if self._headers is None:
            self._headers = SIPHeaders(self.head[self._line :], self.content_length)
        return self._headers

    @property
    def start_line(self) -> bytes:
        """The request or status line."""
        return self.head[: self._line]

    @property
    def headers_read(self) -> bool:
        """Whether :attr:`headers` has been read (so costs nothing to ask again)."""
        return self._headers is not None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and self.head == other.head
            and self.content_length == other.content_length
        )

    def __hash__(self) -> int:
        return hash((type(self), self.head, self.content_length))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.start_line!r}, {self.content_length})"


class Request(_Message):
    """A request: its method, and the rest of its head, read when asked."""

    __slots__ = ("method",)

    def __init__(
        self,
        method: str,
        head: bytes,
        line: int,
        content_length: int,
        headers: SIPHeaders | None = None,
    ) -> None:
        # Not through _Message.__init__: one call less for every message.
        self.method = method
        self.head = head
        self._line = line
        self.content_length = content_length
        self._headers = headers

    @property
    def uri(self) -> str:
        """The Request-URI."""
        return self.start_line.split(b" ")[1].decode("utf-8", "replace")


class Response(_Message):
    """A response: its status, and the rest of its head, read when asked."""

    __slots__ = ("status",)

    def __init__(
        self,
        status: int,
        head: bytes,
        line: int,
        content_length: int,
        headers: SIPHeaders | None = None,
    ) -> None:
        self.status = status
        self.head = head
        self._line = line
        self.content_length = content_length
        self._headers = headers

    @property
    def reason(self) -> str:
        """The Reason-Phrase."""
        return self.start_line[12:].decode("utf-8", "replace")


@attrs.frozen
class GaveUp:
    """The inspector stopped following the stream, for ``reason``."""

    reason: str


Event = Ping | Pong | Request | Response | GaveUp

# Keep-alives come by the thousand on a hostile stream; they carry nothing.
_PING = Ping()
_PONG = Pong()


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
        #: The start of an incomplete header block (or a CR awaiting its LF);
        #: ``None`` while there is none, as there is between most reads, so
        #: that an idle connection holds no buffer.
        self._tail: bytearray | None = None
        #: Body bytes still to skip.
        self._skip = 0
        #: On the client's side, a CRLF that may be half of a ping.
        self._crlf = False

    @property
    def held(self) -> int:
        """Bytes held back: an incomplete header block, less than the cap."""
        return 0 if self._tail is None else len(self._tail)

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
        if tail is not None:  # then no body was being skipped, and start is 0
            # The block's end was not in the tail; look from its last 3 bytes.
            searched = len(tail) - 3
            tail += data
            buffer = tail
        events: list[Event] = []
        try:
            end = self._frame(buffer, start, searched, events)
        except GiveUpError as e:
            self.gave_up = str(e)
            self._tail = None
            events.append(GaveUp(self.gave_up))
            return events
        if end == len(buffer):
            self._tail = None
        elif tail is not None:  # then the buffer is the tail
            del tail[:end]
        else:
            self._tail = bytearray(data[end:])
        return events

    def _frame(  # noqa: PLR0912, PLR0915 -- the hot loop, whole on purpose
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
                    raise GiveUpError("bad-keep-alive")
                continue
            # A message starts: a CRLF left over was leading whitespace.
            self._crlf = False
            if first not in _TOKEN_BYTES:
                raise GiveUpError("bad-start-line")
            end = buffer.find(b"\r\n\r\n", max(pos, searched))
            if end < 0 and size - pos >= self.max_header_bytes:
                raise GiveUpError("header-too-large")
            if end < 0:
                break
            if end + 4 - pos > self.max_header_bytes:
                raise GiveUpError("header-too-large")
            # The start line can hold no CR or LF: where it stops matching is
            # where it must end, at the first CRLF (or the block's end).
            start = _START_LINE.match(buffer, pos, end)
            if start is None:
                raise GiveUpError("bad-start-line")
            line = start.end()
            if line != end and (buffer[line] != 13 or buffer[line + 1] != 10):
                raise GiveUpError("bad-start-line")
            head = buffer[pos:end]
            if type(head) is not bytes:  # a bytearray: an earlier chunk's tail
                head = bytes(head)
            line -= pos
            method = start[1]
            if method is None:
                name = ""
                read = b"REGISTER" in head  # its CSeq may say it is a REGISTER's
            else:
                name = _METHOD_NAMES.get(method) or method.decode("ascii")
                read = name == "REGISTER"
            headers: SIPHeaders | None = None
            if read:
                # A registration is read from it: its headers are read now,
                # its Content-Length in the same pass.
                headers = read_headers(head[line:])
                length = headers.content_length
            else:
                # Where the message ends: all this framing costs for most.
                values = _CONTENT_LENGTH.findall(buffer, pos + line, end)
                if not values:
                    length = 0
                elif len(values) == 1 and values[0].isdigit() and len(values[0]) <= 9:
                    length = int(values[0])  # a plain number under the limit
                else:
                    length = content_length(values)
            if method is None:
                events.append(Response(int(start[2]), head, line, length, headers))
            else:
                events.append(Request(name, head, line, length, headers))
            pos = end + 4 + length
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

#: Their names as they come, to the one string each is known by.
_METHOD_NAMES = {m.encode(): m for m in METHODS}
