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
``bad-header`` (in a REGISTER or a response that may be one's, the only
messages whose header lines are read: a line ended by a bare LF, one
without a name and colon, or a folded line with nothing to continue),
``bad-content-length`` (not a number, beyond
:data:`MAX_CONTENT_LENGTH`, or given twice differently) and
``header-too-large``.
"""

from importlib.machinery import EXTENSION_SUFFIXES

from ocsbal.sip import _accounts, _headers, _inspector
from ocsbal.sip._accounts import DEFAULT_EXPIRES, Registrations, SIPTally, follow
from ocsbal.sip._headers import (
    MAX_CONTACTS,
    MAX_CONTENT_LENGTH,
    MAX_FIELDS,
    Contact,
    SIPHeaders,
)
from ocsbal.sip._inspector import (
    MAX_HEADER_BYTES,
    METHODS,
    Event,
    GaveUp,
    Ping,
    Pong,
    Request,
    Response,
    SIPInspector,
)

#: Whether the SIP path runs compiled by mypyc (setup.py builds it where a C
#: compiler is found), rather than as the Python it is compiled from.
COMPILED = all(
    str(module.__file__).endswith(tuple(EXTENSION_SUFFIXES))
    for module in (_headers, _inspector, _accounts)
)

__all__ = [
    "COMPILED",
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
    "follow",
]
