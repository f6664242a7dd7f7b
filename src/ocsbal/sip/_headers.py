"""The headers of a SIP message that ocsbal reads: kept raw, parsed when asked.

Every pattern here runs in linear time on what a peer sends, and the work on
one message is bounded: at most :data:`MAX_FIELDS` header lines and
:data:`MAX_CONTACTS` Contact values are read.
"""

from __future__ import annotations

import functools
import re

import attrs

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

# A line ended by a bare LF, or one that is neither a header (a token and a
# colon) nor a continuation; possessive, so that it fails in linear time.
_BAD_LINE = re.compile(b"\n(?:(?<!\r\n)|(?!" + _TOKEN + rb"++[ \t]*+:|[ \t]))")
# A line runs to its LF, and its value (a CR at its end and all) on over the
# lines that continue it: "." runs through a line several times faster than
# a class such as [^\r\n] does, and a judged header block has no bare LF.
_READ_HEADER = re.compile(
    rb"\n(call-id|i|cseq|from|f|to|t|contact|m|expires|content-length|l)"
    rb"[ \t]*:[ \t]*(.*(?:\n[ \t].*)*)",
    re.IGNORECASE,
)
_CONTENT_LENGTH = re.compile(
    rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE,
)
#: The headers read, by their names in lower case and RFC 3261 §7.3.3
#: compact forms, to their long names.
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
#: The long names of the headers read.
_READ = frozenset(_CANONICAL.values())
#: ... and by the spellings most messages use, found without lowering them.
_SPELLED = _CANONICAL | {
    name.title().replace(b"Id", b"ID").replace(b"Cseq", b"CSeq"): field
    for name, field in _CANONICAL.items()
}
_FOLD = re.compile(rb"\r\n[ \t]+")

#: RFC 3261 §7.3.3's compact forms of the headers ocsbal does not read.
_COMPACT = {
    "content-encoding": "e",
    "content-type": "c",
    "subject": "s",
    "supported": "k",
    "via": "v",
}


@functools.lru_cache(maxsize=64)
def _lines_of(name: str) -> re.Pattern[bytes]:
    """The lines of header ``name`` (or its compact form) and their values."""
    names = [re.escape(n.encode()) for n in (name, _COMPACT.get(name)) if n]
    return re.compile(
        rb"\n(?:" + b"|".join(names) + rb")[ \t]*:[ \t]*(.*(?:\n[ \t].*)*)",
        re.IGNORECASE,
    )


_NUMBER = re.compile(r"0*([0-9]{1,10})")
_CSEQ = re.compile(r"0*([0-9]{1,10})\s+(\S+)")
_QUOTED = r'"(?:[^"\\]++|\\.)*+"'
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
# (Runs of ordinary characters are taken whole, not one at a time: the same
# match, in a third of the steps.)
_ITEM = re.compile(r"(?:" + _QUOTED + r'|<[^<>]*+>|[^,"<]++|<)++', re.DOTALL)
_BARE_ITEM = re.compile(r"(?:<[^<>]*+>|[^,<]++|<)++", re.DOTALL)
_SEPARATORS = re.compile(r"[\s,]*+")
# A name-addr (groups 1 and 2: URI and parameters) or an addr-spec, whose
# parameters start at the first semicolon (groups 3 and 4; RFC 3261 §20).
_ADDRESS = re.compile(
    r"(?:" + _QUOTED + r'|[^"<]++)*+<([^>]*)>(.*)|([^;]*)(.*)', re.DOTALL
)
_EXPIRES_PARAM = re.compile(r";\s*expires\s*=\s*([^;,\s]*)", re.IGNORECASE)
_TAG_PARAM = re.compile(r";\s*tag\s*=\s*([^;,\s]+)", re.IGNORECASE)


class GiveUpError(Exception):
    """What a message cannot be read for; the inspector gives up on it.

    The message is the :class:`~ocsbal.sip.GaveUp` reason.
    """


@attrs.frozen
class Contact:
    """One Contact value: its URI and, if given, its ``expires`` parameter."""

    uri: str
    expires: int | None = None


class SIPHeaders:
    """The headers of a message that ocsbal reads.

    As h11 does, it keeps them as they came, and parses a value only when
    it is asked for, once: most messages are relayed without anyone asking.  A
    header that is absent, or whose value is malformed, reads as ``None``.

    (Each value waits in a slot of its own, ``None`` until read, in a box
    where ``None`` is a value: ``functools.cached_property`` takes a lock on
    every read in this Python, which cost a REGISTER more than reading its
    headers, and mypyc compiles slots into a native class.)

    :param block: the header lines as they came, each starting with its CRLF.
    :param content_length: the body's length; 0 when the header is absent.
    """

    __slots__ = (
        "_call_id",
        "_contact_items",
        "_contacts",
        "_cseq",
        "_expires",
        "_from",
        "_named",
        "_to",
        "block",
        "content_length",
    )

    def __init__(self, block: bytes = b"", content_length: int = 0) -> None:
        self.block = block
        self.content_length = content_length
        self._named: dict[str, list[bytes]] | None = None
        self._call_id: tuple[str | None] | None = None
        self._cseq: tuple[tuple[int, str] | None] | None = None
        self._to: tuple[str | None, str] | None = None
        self._from: tuple[str | None, str] | None = None
        self._contact_items: list[str] | None = None
        self._contacts: tuple[Contact, ...] | None = None
        self._expires: tuple[int | None] | None = None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SIPHeaders)
            and self.block == other.block
            and self.content_length == other.content_length
        )

    def __hash__(self) -> int:
        return hash((self.block, self.content_length))

    def __repr__(self) -> str:
        return f"SIPHeaders({self.block!r}, {self.content_length})"

    def _found(self) -> dict[str, list[bytes]]:
        """The raw values of each header read, by long name, in order.

        Found together, in one pass, the first time one is asked for; at
        most :data:`MAX_FIELDS` lines are kept, but for Content-Length's,
        which say where the message ends.
        """
        named = self._named
        if named is None:
            named = self._named = {}
            kept = 0
            for name, value in _READ_HEADER.findall(self.block):
                field = _SPELLED.get(name) or _CANONICAL[name.lower()]
                if kept >= MAX_FIELDS and field != "content-length":
                    continue
                kept += 1
                if field in named:
                    named[field].append(value)
                else:
                    named[field] = [value]
        return named

    def values(self, name: str) -> list[str]:
        """The values of a header, in order, decoded, unfolded and stripped.

        Those ocsbal reads (``call-id``, ``cseq``, ``from``, ``to``,
        ``contact``, ``expires`` and ``content-length``) are found together,
        the first time one is asked for; any other (``via``, say) is looked
        for in :attr:`block` when asked.

        :param name: the header's long name, in lower case; its compact form
            (RFC 3261 §7.3.3) is found too.
        """
        if name in _READ:
            return [_text(value) for value in self._found().get(name, [])]
        return [_text(value) for value in _lines_of(name).findall(self.block)]

    def _first(self, name: str) -> str | None:
        found = self._found().get(name)
        return None if found is None else _text(found[0])

    @property
    def call_id(self) -> str | None:
        """The Call-ID."""
        if self._call_id is None:
            self._call_id = (self._first("call-id"),)
        return self._call_id[0]

    @property
    def cseq(self) -> tuple[int, str] | None:
        """The CSeq number and method."""
        if self._cseq is None:
            self._cseq = (_cseq(self._first("cseq")),)
        return self._cseq[0]

    @property
    def to_uri(self) -> str | None:
        """The To header's URI: the address of record of a REGISTER."""
        return self._addressed("to")[0]

    @property
    def to_tag(self) -> str | None:
        """The To header's tag."""
        return _tag(self._addressed("to")[1])

    @property
    def from_uri(self) -> str | None:
        """The From header's URI."""
        return self._addressed("from")[0]

    @property
    def from_tag(self) -> str | None:
        """The From header's tag."""
        return _tag(self._addressed("from")[1])

    def _addressed(self, name: str) -> tuple[str | None, str]:
        """The URI of the To or From header, and the parameters after it."""
        if name == "to":
            if self._to is None:
                self._to = _addressed(self._first("to"))
            return self._to
        if self._from is None:
            self._from = _addressed(self._first("from"))
        return self._from

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """The Contact values but ``*``, in order, from one line or many.

        At most :data:`MAX_CONTACTS` are read.
        """
        if self._contacts is None:
            self._contacts = tuple(
                [_contact(item) for item in self._items() if item != "*"]
            )
        return self._contacts

    @property
    def contact_star(self) -> bool:
        """Whether a Contact is ``*``: remove every binding."""
        return "*" in self._items()

    @property
    def expires(self) -> int | None:
        """The Expires header, in seconds."""
        if self._expires is None:
            self._expires = (_number(self._first("expires"), _MAX_32_BIT),)
        return self._expires[0]

    def _items(self) -> list[str]:
        """The Contact values, as written, from one line or many."""
        if self._contact_items is None:
            items: list[str] = []
            for value in self._found().get("contact", []):
                items += _items(_text(value), MAX_CONTACTS - len(items))
                if len(items) == MAX_CONTACTS:
                    break
            self._contact_items = items
        return self._contact_items


def read_headers(block: bytes) -> SIPHeaders:
    """The headers of ``block``, the header lines, checked and found now.

    Its Content-Length is read in the same pass, for where the body ends.

    :raises GiveUpError: ``bad-header`` if a line ends in a bare LF or is
        neither a header (a token and a colon) nor the continuation of one;
        ``bad-content-length`` as :func:`content_length` says.
    """
    if block.startswith((b"\r\n ", b"\r\n\t")) or _BAD_LINE.search(block):
        raise GiveUpError("bad-header")
    headers = SIPHeaders(block)
    lengths = headers._found().get("content-length")
    if lengths:
        headers.content_length = content_length(lengths)
    return headers


def content_length(values: list[bytes]) -> int:
    """The body's length, from the values of every Content-Length header.

    Two that disagree leave where the body ends unknowable.

    :raises GiveUpError: ``bad-content-length`` if it is not a number, over
        :data:`MAX_CONTENT_LENGTH`, or given twice differently.
    """
    if len(values) == 1:  # most often, one plain number under the limit
        value = values[0].strip()
        if value.isdigit() and len(value) <= 9:
            return int(value)
    raw = set(values)
    if len(raw) > MAX_FIELDS:
        raise GiveUpError("bad-content-length")
    # Given twice it must say the same (once unfolded and stripped).
    lengths = {_text(value) for value in raw}
    length = _number(lengths.pop(), MAX_CONTENT_LENGTH) if len(lengths) == 1 else None
    if length is None:
        raise GiveUpError("bad-content-length")
    return length


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


def _addressed(value: str | None) -> tuple[str | None, str]:
    """The URI of a To or From header, and the parameters after it."""
    return (None, "") if value is None else _address(value)


def _tag(params: str) -> str | None:
    """The tag among a To or From header's parameters."""
    tag = _TAG_PARAM.search(params)
    return tag[1] if tag else None


def _contact(item: str) -> Contact:
    uri, params = _address(item)
    expires = _EXPIRES_PARAM.search(params)
    return Contact(uri, _number(expires[1], _MAX_32_BIT) if expires else None)
