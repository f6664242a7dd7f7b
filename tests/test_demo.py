"""The demo front ends: what ``make demo`` and the integration tests talk to."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import StringTransport

from ocsbal.config import Server, load
from ocsbal.demo import DemoEcho, DemoSIP, tour

SERVER = Server("demo-fe1", "127.0.0.11")
OPTIONS = (
    b"OPTIONS sip:demo SIP/2.0\r\nVia: SIP/2.0/TCP c;branch=z9hG4bK1\r\n"
    b"Call-ID: a\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


def connect(protocol: DemoSIP | DemoEcho) -> StringTransport:
    transport = StringTransport()
    protocol.makeConnection(transport)
    return transport


def test_options_is_answered_naming_the_server() -> None:
    sip = DemoSIP(SERVER)
    transport = connect(sip)
    sip.dataReceived(OPTIONS)
    assert transport.value() == (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP c;branch=z9hG4bK1\r\nCall-ID: a\r\n"
        b"CSeq: 1 OPTIONS\r\nServer: ocsbal-demo demo-fe1 (127.0.0.11)\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_register_gets_its_contact_and_expiry_back() -> None:
    sip = DemoSIP(SERVER)
    transport = connect(sip)
    sip.dataReceived(
        b"REGISTER sip:demo SIP/2.0\r\nCall-ID: r\r\nCSeq: 7 REGISTER\r\n"
        b"Contact: <sip:alice@c>\r\nExpires: 600\r\nl: 0\r\n\r\n"
    )
    answer = transport.value()
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"Contact: <sip:alice@c>\r\nExpires: 600\r\n" in answer


def test_a_call_is_answered_and_other_methods_are_not_implemented() -> None:
    sip = DemoSIP(SERVER)
    transport = connect(sip)
    sip.dataReceived(b"INVITE sip:bob SIP/2.0\r\nContent-Length: 3\r\n\r\nv=0")
    assert transport.value().startswith(b"SIP/2.0 200 OK\r\n")
    transport.clear()
    sip.dataReceived(b"ACK sip:bob SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert transport.value() == b""  # an ACK is answered by nothing
    sip.dataReceived(b"PRACK sip:bob SIP/2.0\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"SIP/2.0 501 Not Implemented\r\n")


def test_messages_split_anyhow_are_each_answered_once() -> None:
    sip = DemoSIP(SERVER)
    transport = connect(sip)
    stream = b"\r\n\r\n" + OPTIONS + OPTIONS.replace(b"Content-Length: 0", b"l: 4")
    stream += b"body"
    for i in range(len(stream)):
        sip.dataReceived(stream[i : i + 1])
    assert transport.value().count(b"SIP/2.0 200 OK") == 2
    assert transport.value().startswith(b"\r\nSIP/2.0")  # the keep-alive's pong


def test_a_header_block_without_end_is_dropped_past_the_cap() -> None:
    sip = DemoSIP(SERVER)
    transport = connect(sip)
    sip.dataReceived(b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 20000)
    assert transport.disconnecting


@pytest.mark.parametrize("protocol", [DemoSIP(SERVER), DemoEcho()])
def test_the_answer_is_written_before_closing_on_the_clients_eof(
    protocol: DemoSIP | DemoEcho,
) -> None:
    """``echo ... | nc -q1`` shuts down writing, then waits for the answer."""
    transport = connect(protocol)
    protocol.dataReceived(OPTIONS)
    protocol.readConnectionLost()
    assert transport.value() != b""
    assert transport.disconnecting  # after flushing what was written


def test_the_tour_uses_the_pool_it_runs() -> None:
    pool = load(Path(__file__).parents[1] / "examples" / "demo.ini")
    text = tour(pool)
    assert "VIP 127.0.0.10, 12 ports" in text
    assert "nc -q1 127.0.0.10 5060" in text
    assert "nc -q1 127.0.0.10 135" in text
    assert "demo-fe3 127.0.0.13" in text
    assert (
        "admin interface (status page, JSON API) is on http://127.0.0.1:9900/" in text
    )
    assert "ocsbal ctl --admin tcp:host=127.0.0.1:port=9900 servers" in text
