"""The inspector: frames one direction of a SIP stream into events.

See :mod:`ocsbal.sip` for what it reads and when it gives up.
"""

from __future__ import annotations

import re

import attrs

from ocsbal.sip._headers import _TOKEN, GiveUpError, SIPHeaders, read_headers

#: The largest header block followed, its closing empty line included.
MAX_HEADER_BYTES = 64 * 1024

_TOKEN_BYTES = frozenset(
    b"-.!%*_+`'~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)

_CRLFS = re.compile(rb"(?:\r\n)+")
_VERSION = rb"[Ss][Ii][Pp]/2\.0"  # RFC 3261 §7.1: case-insensitive
_REQUEST_LINE = re.compile(b"(" + _TOKEN + rb"+) ([^\x00-\x20\x7f]+) " + _VERSION)
_STATUS_LINE = re.compile(
    _VERSION + rb" ([1-6][0-9][0-9]) ([^\x00-\x08\x0a-\x1f\x7f]*)"
)


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

    @property
    def held(self) -> int:
        """Bytes held back: an incomplete header block, less than the cap."""
        return len(self._tail)

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
        except GiveUpError as e:
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
            method.decode("ascii"), uri.decode("utf-8", "replace"), read_headers(block)
        )
    status = _STATUS_LINE.fullmatch(start)
    if status is not None:
        code, reason = status.groups()
        return Response(
            int(code), reason.decode("utf-8", "replace"), read_headers(block)
        )
    raise GiveUpError("bad-start-line")
