"""The SIP inspector: framing by the RFC 3261 rules, keep-alives, giving up."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocsbal.sip import (
    Contact,
    Event,
    GaveUp,
    Ping,
    Pong,
    Registrations,
    Request,
    Response,
    SIPHeaders,
    SIPInspector,
    SIPTally,
)

REGISTER = (
    b"REGISTER sip:contoso.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 10.1.0.5:50123;branch=z9hG4bK776asdhds\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Alice" <sip:alice@contoso.com>\r\n'
    b'From: "Alice" <sip:alice@contoso.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33\r\n"
    b"CSeq: 314159 REGISTER\r\n"
    b"Contact: <sip:alice@10.1.0.5:50123;transport=tcp>;expires=3600\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"To: <sip:alice@contoso.com>;tag=37GkEhwl6\r\n"
    b"From: <sip:alice@contoso.com>;tag=1928301774\r\n"
    b"i: a84b4c76e66710@pc33\r\n"
    b"CSeq: 314159 REGISTER\r\n"
    b"m: <sip:alice@10.1.0.5:50123;transport=tcp>;expires=1200,\r\n"
    b" <sip:alice@10.1.0.6>;Expires=60\r\n"
    b"Expires: 7200\r\n"
    b"l: 11\r\n\r\n"
    b"hello\r\n\r\nxx"
)


def events(*chunks: bytes) -> list[Event]:
    inspector = SIPInspector()
    return [event for chunk in chunks for event in inspector.feed(chunk)]


def test_a_register_and_its_headers() -> None:
    [request] = events(REGISTER)
    assert isinstance(request, Request)
    assert (request.method, request.uri) == ("REGISTER", "sip:contoso.com")
    headers = request.headers
    assert headers.call_id == "a84b4c76e66710@pc33"
    assert headers.cseq == (314159, "REGISTER")
    assert headers.to_uri == "sip:alice@contoso.com"
    assert (headers.from_uri, headers.from_tag) == (
        "sip:alice@contoso.com",
        "1928301774",
    )
    assert headers.contacts == (
        Contact("sip:alice@10.1.0.5:50123;transport=tcp", 3600),
    )


def test_compact_folded_and_listed_headers_and_a_body_skipped() -> None:
    [response, register] = events(OK + REGISTER)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (200, "OK")
    headers = response.headers
    assert headers.call_id == "a84b4c76e66710@pc33"
    assert headers.contacts == (
        Contact("sip:alice@10.1.0.5:50123;transport=tcp", 1200),
        Contact("sip:alice@10.1.0.6", 60),
    )
    assert (headers.expires, headers.content_length) == (7200, 11)
    # The body held a CRLFCRLF: skipped by length, it is no keep-alive.
    assert isinstance(register, Request)


def test_contact_star_and_quoted_commas() -> None:
    [request] = events(
        b"REGISTER sip:c.com SIP/2.0\r\nContact: *\r\nExpires: 0\r\n\r\n"
        b'OPTIONS sip:c.com SIP/2.0\r\nContact: "Doe, J" <sip:j@c.com>\r\n\r\n'
    )[:1]
    assert request.headers.contact_star  # type: ignore[union-attr]
    assert request.headers.expires == 0  # type: ignore[union-attr]
    options = events(
        b'OPTIONS sip:c.com SIP/2.0\r\nContact: "Doe, J" <sip:j@c.com>\r\n\r\n'
    )
    assert options[0].headers.contacts == (Contact("sip:j@c.com"),)  # type: ignore[union-attr]


def events_from_server(*chunks: bytes) -> list[Event]:
    inspector = SIPInspector(from_server=True)
    return [event for chunk in chunks for event in inspector.feed(chunk)]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"\r\n\r\n", [Ping()]),
        (b"\r\n\r\n\r\n\r\n", [Ping(), Ping()]),
        (b"\r\n", []),  # half a ping, or leading whitespace: not yet known
        (b"\r\n" + REGISTER[:17], []),  # leading whitespace (RFC 3261 7.5)
        (b"\r\n\r\n\r\n" + REGISTER[:17], [Ping()]),
    ],
)
def test_the_clients_double_crlfs_are_pings(
    stream: bytes, expected: list[Event]
) -> None:
    assert events(stream) == expected


def test_a_ping_cut_in_two_is_one_ping() -> None:
    assert events(b"\r\n", b"\r", b"\n") == [Ping()]


def test_each_crlf_from_the_server_is_a_pong_at_once() -> None:
    assert events_from_server(b"\r\n") == [Pong()]
    assert events_from_server(b"\r\n\r\n", b"\r") == [Pong(), Pong()]
    assert events_from_server(OK, b"\r\n")[1:] == [Pong()]


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad-start-line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "bad-start-line"),
        (b"REGISTER sip:x SIP/2.0\r\nno colon here\r\n\r\n", "bad-header"),
        (b"REGISTER sip:x SIP/2.0\r\n folded first\r\n\r\n", "bad-header"),
        (b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\nno colon\r\n\r\n", "bad-header"),
        (b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n", "bad-content-length"),
        (b"OPTIONS sip:x SIP/2.0\r\nl: 99999999999\r\n\r\n", "bad-content-length"),
        (b"OPTIONS sip:x SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\n", "bad-content-length"),
        (b"\n\n", "bad-keep-alive"),
        (b"\r\rOPTIONS", "bad-keep-alive"),
        (b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 20000, "header-too-large"),
    ],
)
def test_what_it_cannot_follow_it_gives_up_on_for_good(
    stream: bytes, reason: str
) -> None:
    """Header lines are checked only where a registration is read from:
    a REGISTER, or a response that may be one's."""
    inspector = SIPInspector()
    assert inspector.feed(stream) == [GaveUp(reason)]
    assert inspector.gave_up == reason
    assert inspector.feed(REGISTER) == []


def test_a_header_block_just_under_the_cap_is_followed() -> None:
    inspector = SIPInspector(max_header_bytes=200)
    assert len(REGISTER) < 400
    assert inspector.feed(b"\r\n\r\n" + REGISTER[:150]) == [Ping()]
    assert inspector.feed(REGISTER[150:]) == [GaveUp("header-too-large")]


messages = st.sampled_from([REGISTER, OK, b"\r\n\r\n", b"\r\n"])


@given(st.lists(messages, max_size=8), st.booleans(), st.data())
def test_any_cutting_of_a_stream_yields_the_same_events(
    parts: list[bytes], from_server: bool, data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [
        stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]

    def feed(*pieces: bytes) -> list[Event]:
        inspector = SIPInspector(from_server=from_server)
        return [event for piece in pieces for event in inspector.feed(piece)]

    assert feed(*chunks) == feed(stream)


def test_an_inspector_between_messages_holds_no_buffer() -> None:
    # Most connections sit between messages for hours: no buffer each.
    inspector = SIPInspector()
    inspector.feed(REGISTER[:40])
    assert inspector.held == 40
    inspector.feed(REGISTER[40:])
    assert inspector.held == 0
    assert not [r for r in gc.get_referents(inspector) if isinstance(r, bytearray)]


@given(st.lists(st.binary(max_size=200), max_size=20), st.booleans())
def test_arbitrary_bytes_never_raise_and_stay_bounded(
    chunks: list[bytes], from_server: bool
) -> None:
    inspector = SIPInspector(max_header_bytes=256, from_server=from_server)
    for chunk in chunks:
        inspector.feed(chunk)
        assert inspector.held < 256


def exchange(
    account: Registrations, request: bytes, response: bytes, now: float
) -> None:
    for event in SIPInspector().feed(request):
        account.from_client(event, now)
    for event in SIPInspector().feed(response):
        account.from_server(event, now)


def answer(
    status: bytes = b"200 OK", cseq: bytes = b"314159", extra: bytes = b""
) -> bytes:
    return (
        b"SIP/2.0 " + status + b"\r\nCall-ID: a84b4c76e66710@pc33\r\n"
        b"CSeq: " + cseq + b" REGISTER\r\n" + extra + b"Content-Length: 0\r\n\r\n"
    )


class TestRegistrations:
    def test_the_granted_expiry_of_its_own_contact(self) -> None:
        account = Registrations()
        exchange(account, REGISTER, OK, now=100)
        assert account.bindings == {"sip:alice@contoso.com": 1300}
        assert account.last_message == "200 OK (REGISTER)"

    def test_an_answered_register_leaves_no_message_held(self) -> None:
        # An idle connection keeps its account for hours: what it read (the
        # messages, their parsed headers, the REGISTER awaiting its answer)
        # must not stay with it, only its bindings and the last start line.
        account = Registrations()
        exchange(account, REGISTER, OK, now=100)
        held = gc.get_referents(account)
        assert not [r for r in held if isinstance(r, (Request, Response, SIPHeaders))]
        assert len([r for r in held if isinstance(r, dict)]) == 1  # the bindings
        assert account.last_message == "200 OK (REGISTER)"

    def test_else_the_expires_header_else_3600(self) -> None:
        account = Registrations()
        exchange(account, REGISTER, answer(extra=b"Expires: 600\r\n"), now=0)
        assert account.expiry == 600
        exchange(account, REGISTER, answer(), now=1000)
        assert account.expiry == 4600  # a refresh moves it

    def test_a_failure_or_an_unmatched_answer_registers_nothing(self) -> None:
        account = Registrations()
        exchange(account, REGISTER, answer(b"401 Unauthorized"), now=0)
        exchange(account, REGISTER, answer(cseq=b"1"), now=0)
        assert account.bindings == {}

    def test_expires_zero_ends_the_registration(self) -> None:
        account = Registrations()
        exchange(account, REGISTER, OK, now=0)
        exchange(account, REGISTER.replace(b"expires=3600", b"expires=0"), answer(), 5)
        assert account.expiry is None

    def test_a_missed_refresh_is_past_expiry_plus_grace(self) -> None:
        account = Registrations()
        assert not account.missed_refresh(10**9, grace=60)
        exchange(account, REGISTER, OK, now=100)  # expires at 1300
        assert not account.missed_refresh(1360, grace=60)
        assert account.missed_refresh(1361, grace=60)

    def test_each_lapse_is_told_once_and_a_refresh_ends_it(self) -> None:
        account = Registrations()
        exchange(account, REGISTER, OK, now=100)  # expires at 1300
        told = [account.lapsed(t, grace=60) for t in (1300, 1361, 1400, 1500)]
        assert told == [False, True, False, False]
        exchange(account, REGISTER, OK, now=1500)  # refreshed: until 2700
        assert not account.missed_refresh(1600, grace=60)
        assert [account.lapsed(t, grace=60) for t in (1600, 2761, 2800)] == [
            False,
            True,
            False,
        ]

    def test_keep_alives_count_and_pending_registers_are_bounded(self) -> None:
        account = Registrations(max_pending=4)
        inspector = SIPInspector()
        for n in range(10):
            for event in inspector.feed(REGISTER.replace(b"314159", b"%d" % n)):
                account.from_client(event, 0)
        for event in SIPInspector().feed(b"\r\n\r\n\r\n\r\n"):
            account.from_client(event, 0)
        assert account.keepalives == 2
        exchange(account, b"", answer(cseq=b"5"), now=0)  # forgotten: oldest
        assert account.expiry is None
        exchange(account, b"", answer(cseq=b"6"), now=0)  # one of the last 4
        assert account.expiry == 3600  # no Contact, no Expires: the default


def test_headers_it_does_not_read_are_still_checked_for_form() -> None:
    folded = REGISTER.replace(b"Max-Forwards: 70\r\n", b"Subject: a\r\n  b\r\n")
    [request] = events(folded)
    assert isinstance(request, Request)
    assert events(REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards 70")) == [
        GaveUp("bad-header")
    ]


def test_header_values_are_read_only_when_asked_for_and_malformed_ones_are_none() -> (
    None
):
    [request] = events(
        b"register sip:c.com sip/2.0\r\n"  # methods are case-sensitive, versions not
        b"To: <sip:a@c.com>;tag=x1\r\n"
        b"CSeq: 4294967296 REGISTER\r\n"  # beyond 2**32 - 1
        b"Expires: soon\r\n"
        b"Contact: <sip:a@10.0.0.1>;expires=never\r\n"
        b"Contact: <sip:a@10.0.0.2>\r\n"
        b"Content-Length: 0\r\nl: 0\r\n\r\n"  # twice, but the same
    )
    assert isinstance(request, Request)
    assert request.method == "register"
    headers = request.headers
    assert (headers.to_uri, headers.to_tag) == ("sip:a@c.com", "x1")
    assert (headers.cseq, headers.expires, headers.call_id) == (None, None, None)
    assert headers.contacts == (Contact("sip:a@10.0.0.1"), Contact("sip:a@10.0.0.2"))
    assert headers.values("content-length") == ["0", "0"]


def test_the_tally_counts_by_method_class_and_kind_and_makes_up_no_labels() -> None:
    tally = SIPTally()
    stream = REGISTER + b"\r\n\r\n" + REGISTER.replace(b"REGISTER sip", b"X-EVIL sip")
    for event in [*events(stream), *events(OK), Pong(), GaveUp("bad-header")]:
        tally.count(event)
    assert tally.requests == {"REGISTER": 1, "other": 1}
    assert tally.responses == {"2xx": 1}
    assert tally.keepalives == {"ping": 1, "pong": 1}
    assert tally.gave_up == {"bad-header": 1}


def test_any_header_can_be_asked_for_long_or_compact() -> None:
    [request] = events(
        REGISTER.replace(b"Max-Forwards: 70\r\n", b"v: SIP/2.0/TCP b\r\n  ;x=1\r\n")
    )
    assert isinstance(request, Request)
    assert request.headers.values("via") == [
        "SIP/2.0/TCP 10.1.0.5:50123;branch=z9hG4bK776asdhds",
        "SIP/2.0/TCP b ;x=1",
    ]
    assert request.headers.values("subject") == []


def test_a_message_a_registration_is_not_read_from_is_only_framed() -> None:
    """Its header lines are not checked: a line without a colon costs nothing,
    and where the message ends is all that is read of it."""
    odd = b"OPTIONS sip:x SIP/2.0\r\nno colon here\r\nl: 2\r\n\r\nok"
    inspector = SIPInspector()
    [options, register] = inspector.feed(odd + REGISTER)
    assert isinstance(options, Request)
    assert (options.method, options.content_length) == ("OPTIONS", 2)
    assert isinstance(register, Request)
    assert inspector.gave_up is None
