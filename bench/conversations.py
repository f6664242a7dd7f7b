"""The SIP the benchmarks carry: what Office Communicator 2007 R2 and its pool say.

Two conversations, each a list of turns (what the client sends, what the
pool answers), played in order on a connection and then again:

- :func:`register_only`: a REGISTER refresh with Kerberos credentials and its
  200 OK granting the Contact 7200 s, every turn.  Every message is one the
  inspector must read whole.
- :func:`ocs_mix`: a sign-in (REGISTER, 401 with the Kerberos challenge,
  REGISTER with credentials, 200 OK; SUBSCRIBEs to the roaming contacts and
  the roaming self, answered with their lists, 2 to 8 KB of XML), then the
  steady traffic of a signed-in client: SERVICE requests carrying presence
  XML, the BENOTIFYs and NOTIFYs the pool pushes (the client's 200 OK is its
  half of such a turn), MESSAGEs, INFOs, SUBSCRIBE refreshes and
  keep-alives (CRLF CRLF, answered CRLF), with a REGISTER refresh about one
  message in twenty.

Each message's CSeq and branch differ; the bodies' lengths are exact.
"""

from __future__ import annotations

from collections.abc import Callable

Turn = tuple[bytes, bytes]

USER = b"alice@contoso.com"
CLIENT = b"192.168.1.20:50123"
EPID = b"01010101"
CONTACT = (
    b"<sip:192.168.1.20:50123;transport=tls;ms-opaque=d3470f2e1d>;"
    b'methods="INVITE, MESSAGE, INFO, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER";'
    b'proxy=replace;+sip.instance="<urn:uuid:D1C3A8E0-4A36-5D36-9A4F-1B2C3D4E5F60>"'
)
KERBEROS = (
    b'Kerberos qop="auth", realm="SIP Communications Service", opaque="8F7AD3C4",'
    b' crand="1a2b3c4d", cnum="%(n)d", targetname="sip/ocspool.contoso.com",'
    b' response="0123456789abcdef0123456789abcdef01234567"'
)


def _message(start: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [start, *headers, b"Content-Length: %d" % len(body), b"", b""]
    return b"\r\n".join(lines) + body


def _request(
    method: bytes, uri: bytes, n: int, headers: list[bytes], body: bytes = b""
) -> bytes:
    return _message(
        method + b" " + uri + b" SIP/2.0",
        [
            b"Via: SIP/2.0/TLS " + CLIENT + b";branch=z9hG4bK%08x" % (n * 7919),
            b"Max-Forwards: 70",
            b"From: <sip:" + USER + b">;tag=8e9b2e3d5c;epid=" + EPID,
            b"To: <sip:" + USER + b">",
            b"Call-ID: %032x" % (n * 104729 + 1),
            b"CSeq: %d " % n + method,
            b"User-Agent: UCCAPI/3.5.6907.0 OC/3.5.6907.0 "
            b"(Microsoft Office Communicator 2007 R2)",
            *headers,
        ],
        body,
    )


def _response(
    status: bytes, request: bytes, headers: list[bytes], body: bytes = b""
) -> bytes:
    """The response of ``request``: its Via, From, To, Call-ID and CSeq."""
    copied = [
        line
        for line in request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        if line.split(b":")[0] in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")
    ]
    return _message(b"SIP/2.0 " + status, [*copied, *headers, b"Server: RTC/3.5"], body)


def _register(n: int, credentials: bool) -> bytes:
    headers = [
        b"Contact: " + CONTACT,
        b"Supported: gruu-10, adhoclist, msrtc-event-categories",
        b"Supported: ms-forking",
        b"ms-keep-alive: UAC;hop-hop=yes",
        b"Event: registration",
    ]
    if credentials:
        headers.append(b"Proxy-Authorization: " + KERBEROS % {b"n": n})
    return _request(b"REGISTER", b"sip:contoso.com", n, headers)


def _registered(register: bytes) -> bytes:
    return _response(
        b"200 OK",
        register,
        [
            b"ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-point=no; timeout=300",
            b'Authentication-Info: Kerberos rspauth="602306092A864886F7120102020201",'
            b' srand="3A1B2C4D", snum="3", opaque="8F7AD3C4", qop="auth",'
            b' targetname="sip/ocspool.contoso.com",'
            b' realm="SIP Communications Service"',
            b"Contact: " + CONTACT.replace(b"proxy=replace", b"expires=7200"),
            b"Expires: 7200",
            b'presence-state: register-action="added"',
            b"Allow-Events: vnd-microsoft-provisioning,vnd-microsoft-roaming-contacts,"
            b"presence,presence.wpending,vnd-microsoft-roaming-self",
        ],
    )


def _challenge(register: bytes) -> bytes:
    return _response(
        b"401 Unauthorized",
        register,
        [
            b'Proxy-Authenticate: Kerberos realm="SIP Communications Service",'
            b' targetname="sip/ocspool.contoso.com", opaque="8F7AD3C4"',
            b'Proxy-Authenticate: NTLM realm="SIP Communications Service",'
            b' targetname="ocsfe01.contoso.com", opaque="8F7AD3C4"',
        ],
    )


def _xml(element: bytes, size: int) -> bytes:
    """An XML document of about ``size`` bytes, its items numbered."""
    item = (
        b'<contact uri="sip:user%04d@contoso.com" name="Colleague %04d"'
        b' groups="1 2" subscribed="true"/>\r\n'
    )
    items, n = [], 0
    while sum(map(len, items)) < size:
        items.append(item % (n, n))
        n += 1
    return (
        b'<?xml version="1.0" encoding="utf-8"?>\r\n<'
        + element
        + b' xmlns="http://schemas.microsoft.com/2006/09/sip/roaming-contacts">\r\n'
        + b"".join(items)
        + b"</"
        + element
        + b">"
    )


def _presence(n: int) -> bytes:
    return (
        b'<publish xmlns="http://schemas.microsoft.com/2006/09/sip/rich-presence">'
        b'<publications uri="sip:alice@contoso.com"><publication categoryName="state"'
        b' instance="%d" container="2" version="%d" expireType="endpoint">'
        b'<state xmlns="http://schemas.microsoft.com/2006/09/sip/state"'
        b' manual="false" xsi:type="machineState"><availability>3500</availability>'
        b"<endpointLocation></endpointLocation></state></publication>"
        b"</publications></publish>" % (n, n)
    )


def _subscribe(n: int, event: bytes) -> bytes:
    return _request(
        b"SUBSCRIBE",
        b"sip:" + USER,
        n,
        [
            b"Contact: " + CONTACT,
            b"Event: " + event,
            b"Accept: application/vnd-microsoft-roaming-contacts+xml",
            b"Supported: com.microsoft.autoextend, ms-benotify,"
            b" ms-piggyback-first-notify",
            b"Expires: 28800",
        ],
    )


def _subscribed(subscribe: bytes, size: int) -> bytes:
    body = _xml(b"contactList", size)
    return _response(
        b"200 OK",
        subscribe,
        [
            b"Expires: 28800",
            b"Content-Type: application/vnd-microsoft-roaming-contacts+xml",
            b"Event: vnd-microsoft-roaming-contacts",
            b"subscription-state: active;expires=28800",
            b"ms-piggyback-cseq: 1",
            b"Supported: ms-benotify, ms-piggyback-first-notify",
        ],
        body,
    )


def _service(n: int) -> Turn:
    body = _presence(n)
    service = _request(
        b"SERVICE",
        b"sip:" + USER,
        n,
        [b"Content-Type: application/msrtc-category-publish+xml"],
        body,
    )
    return service, _response(b"200 OK", service, [])


def _pushed(n: int, method: bytes, size: int) -> Turn:
    """The pool pushes ``method`` with a body; the client answers 200 OK."""
    body = _xml(b"categories", size)
    push = _message(
        method + b" sip:" + CLIENT + b";transport=tls SIP/2.0",
        [
            b"Via: SIP/2.0/TLS 10.0.0.21:5061;branch=z9hG4bK%08x.77B6D1E2" % n,
            b"Max-Forwards: 70",
            b"To: <sip:" + USER + b">;tag=8e9b2e3d5c;epid=" + EPID,
            b"From: <sip:" + USER + b">;tag=1A2B3C4D",
            b"Call-ID: 5e6f7a8b9c0d4e1f",
            b"CSeq: %d " % n + method,
            b"Event: vnd-microsoft-roaming-self",
            b"Subscription-State: active;expires=28800",
            b"Content-Type: application/vnd-microsoft-roaming-self+xml",
        ],
        body,
    )
    # The client's 200 OK goes first in the turn: it answers the push that
    # ended the turn before (the conversation loops, so every push is answered).
    return _response(b"200 OK", push, []), push


def _message_turn(n: int) -> Turn:
    body = b"Can we move the 3 pm review to 4?  " * 3
    message = _request(
        b"MESSAGE",
        b"sip:bob@contoso.com",
        n,
        [b"Content-Type: text/plain; charset=UTF-8", b"ms-im-format: text/plain"],
        body,
    )
    return message, _response(b"200 OK", message, [])


def _info(n: int) -> Turn:
    body = b'<?xml version="1.0"?><KeyboardActivity><status status="type"/>'
    info = _request(
        b"INFO",
        b"sip:bob@contoso.com",
        n,
        [b"Content-Type: application/xml"],
        body + b"</KeyboardActivity>",
    )
    return info, _response(b"200 OK", info, [])


def _presence_turn(n: int) -> Turn:
    subscribe = _subscribe(n, b"presence")
    return subscribe, _subscribed(subscribe, 2500)


def register_only() -> list[Turn]:
    """A REGISTER refresh and its 200 OK, every turn, the CSeq counting up."""
    registers = [_register(n, credentials=True) for n in range(1, 11)]
    return [(register, _registered(register)) for register in registers]


#: A keep-alive ping and its pong (RFC 5626).
KEEPALIVE: Turn = (b"\r\n\r\n", b"\r\n")


def ocs_mix() -> list[Turn]:
    """A sign-in, then a signed-in client's traffic; see the module docstring."""
    n = 1
    first = _register(n, credentials=False)
    second = _register(n + 1, credentials=True)
    contacts = _subscribe(n + 2, b"vnd-microsoft-roaming-contacts")
    self_ = _subscribe(n + 3, b"vnd-microsoft-roaming-self")
    turns: list[Turn] = [
        (first, _challenge(first)),
        (second, _registered(second)),
        (contacts, _subscribed(contacts, 8000)),
        (self_, _subscribed(self_, 2000)),
    ]
    n += 4
    steady: list[Callable[[int], Turn]] = [
        _service,
        lambda n: _pushed(n, b"BENOTIFY", 1500),
        _message_turn,
        _info,
        lambda n: _pushed(n, b"NOTIFY", 3000),
        _service,
        _message_turn,
        lambda _: KEEPALIVE,
        lambda n: _pushed(n, b"BENOTIFY", 800),
        _presence_turn,
    ]
    for round_ in range(8):
        for make in steady:
            turns.append(make(n))
            n += 1
        if round_ in (3, 7):  # a refresh now and then, as a signed-in client does
            register = _register(n, credentials=True)
            turns.append((register, _registered(register)))
            n += 1
    return turns


def messages(turns: list[Turn]) -> tuple[int, int]:
    """How many SIP messages, and of them REGISTERs and their responses."""
    sent = [m for turn in turns for m in turn if m.strip()]
    registers = [m for m in sent if b" REGISTER\r\n" in m.split(b"\r\n\r\n")[0]]
    return len(sent), len(registers)


def files(turns: list[Turn]) -> tuple[bytes, bytes]:
    """What the load generator plays: the client's halves, and the pool's."""
    return b"".join(sent for sent, _ in turns), b"".join(answer for _, answer in turns)


def fewest_seen(turns: list[Turn], answered: int, connections: int) -> tuple[int, int]:
    """The fewest REGISTERs, and 2xx responses, ``answered`` round trips carry.

    ``bench/loadgen.c`` plays ``turns`` from the first on each of
    ``connections``, sends a keep-alive with the message after it, and
    counts a round trip when its answer is in: so what its count says was
    carried is at least every cycle's share less, on each connection, the
    most a cycle cut short can lack.  The benchmark holds the inspector's
    counts (``/metrics``) to these.
    """
    trips: list[tuple[int, int]] = []  # REGISTERs and 2xx of each round trip
    for sent, answer in turns:
        if not sent.strip():  # a keep-alive, sent with the next message
            continue
        registers = int(sent.startswith(b"REGISTER "))
        successes = sum(m.startswith(b"SIP/2.0 2") for m in (sent, answer))
        trips.append((registers, successes))
    per_trip = len(trips)
    fewest = []
    for column in (0, 1):
        counts = [trip[column] for trip in trips]
        share = sum(counts) / per_trip
        prefixes = [sum(counts[:cut]) for cut in range(per_trip)]
        lacking = max(cut * share - had for cut, had in enumerate(prefixes))
        fewest.append(int(answered * share - connections * lacking))
    return fewest[0], fewest[1]


if __name__ == "__main__":
    for name, turns in (("register-only", register_only()), ("ocs-mix", ocs_mix())):
        total, registers = messages(turns)
        size = sum(len(m) for turn in turns for m in turn)
        print(
            f"{name}: {len(turns)} turns, {total} messages, {registers} REGISTERs "
            f"and their responses, {size:,} bytes"
        )
