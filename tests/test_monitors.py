"""The monitors, driven on a memory reactor: every exchange, answer and timeout."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ocsbal.config import Monitor, MonitorType, Pool, Port, PortProtocol, Server
from ocsbal.health import IMonitor
from ocsbal.monitors import (
    HeartbeatError,
    HTTPSMonitor,
    SIPOptionsMonitor,
    SIPStatusReader,
    TCPMonitor,
    TLSMonitor,
    Unverified,
    monitor_for,
)

FE1 = Server("fe1", "127.0.1.11")


class MemoryNetwork:
    """Plays the servers' side of the connections a monitor opens."""

    reactor: MemoryReactorClock

    def accept(self, index: int) -> tuple[Any, StringTransport]:
        host, port, factory, *_ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def fail(self, index: int, error: Exception) -> None:
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(self.reactor.connectors[index], Failure(error))


class TestTCPMonitor(MemoryNetwork, SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = TCPMonitor(self.reactor, (5061, 5060), timeout=2)

    def test_it_provides_imonitor(self) -> None:
        assert verifyObject(IMonitor, self.monitor)

    def test_every_port_is_connected_with_the_timeout(self) -> None:
        self.monitor.check(FE1)
        assert [(h, p, t) for h, p, _, t, _ in self.reactor.tcpClients] == [
            ("127.0.1.11", 5061, 2),
            ("127.0.1.11", 5060, 2),
        ]

    def test_success_when_every_port_accepts_and_each_is_closed(self) -> None:
        d = self.monitor.check(FE1)
        transports = [self.accept(0)[1], self.accept(1)[1]]
        assert self.successResultOf(d) is None
        assert all(t.disconnecting for t in transports)

    def test_one_refused_port_fails_the_check_naming_it(self) -> None:
        d = self.monitor.check(FE1)
        self.accept(0)
        self.fail(1, ConnectionRefusedError())
        assert str(self.failureResultOf(d).value) == "port 5060 refused"

    def test_a_timeout_is_named(self) -> None:
        d = self.monitor.check(FE1)
        self.fail(0, TimeoutError())
        self.accept(1)
        assert str(self.failureResultOf(d).value) == "port 5061 timed out after 2 s"


class TestSIPStatusReader:
    def test_provisional_responses_are_skipped(self) -> None:
        reader = SIPStatusReader()
        reader.feed(b"SIP/2.0 100 Trying\r\nCSeq: 1 OPTIONS\r\n\r\nSIP/2.0 2")
        assert reader.status is None
        reader.feed(b"00 OK\r\nContent-Length: 0\r\n\r\n")
        assert reader.status == (200, "OK")

    def test_a_provisional_responses_body_is_skipped_by_its_length(self) -> None:
        """The SIP framer's own rule; reading lines alone took the body for
        a status line."""
        reader = SIPStatusReader()
        reader.feed(
            b"SIP/2.0 183 Session Progress\r\nContent-Length: 18\r\n\r\n"
            b"SIP/2.0 503 Nope\r\n"
            b"\r\nSIP/2.0 200 OK\r\n\r\n"
        )
        assert reader.status == (200, "OK")

    @pytest.mark.parametrize(
        "answer",
        [
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"SIP/2.0 2000 OK\r\n\r\n",
            b"\x16\x03\x01\r\n\r\n",
        ],
    )
    def test_anything_else_is_not_sip(self, answer: bytes) -> None:
        with pytest.raises(HeartbeatError, match="answered something that is not SIP"):
            SIPStatusReader().feed(answer)

    def test_it_reads_a_bounded_amount(self) -> None:
        reader = SIPStatusReader(limit=100)
        reader.feed(b"SIP/2.0 180 Ringing\r\n\r\n" * 4)
        with pytest.raises(HeartbeatError, match="sent 111 bytes and no final SIP"):
            reader.feed(b"x" * 19)


class TestSIPOptionsMonitor(MemoryNetwork, SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.monitor = SIPOptionsMonitor(
            self.reactor, (5060,), timeout=2, fqdn="pool01.example.com"
        )

    def test_it_provides_imonitor(self) -> None:
        assert verifyObject(IMonitor, self.monitor)

    def test_the_request_is_a_complete_options(self) -> None:
        self.monitor.check(FE1)
        _, transport = self.accept(0)
        head = transport.value().decode()
        lines = head.split("\r\n")
        assert lines[0] == "OPTIONS sip:127.0.1.11:5060;transport=tcp SIP/2.0"
        assert lines[1].startswith("Via: SIP/2.0/TCP pool01.example.com;branch=z9hG4bK")
        assert "CSeq: 1 OPTIONS" in lines
        assert "Max-Forwards: 70" in lines
        assert head.endswith("Content-Length: 0\r\n\r\n")

    def test_a_final_answer_in_pieces_passes_and_closes(self) -> None:
        d = self.monitor.check(FE1)
        protocol, transport = self.accept(0)
        for piece in (b"SIP/2.0 100 Trying\r\n\r\nSIP/2.0 4", b"04 Not Found\r\n\r\n"):
            protocol.dataReceived(piece)
        assert self.successResultOf(d) is None
        assert transport.disconnecting

    def test_503_fails(self) -> None:
        d = self.monitor.check(FE1)
        protocol, _ = self.accept(0)
        protocol.dataReceived(b"SIP/2.0 503 Service Unavailable\r\n\r\n")
        assert str(self.failureResultOf(d).value) == (
            "port 5060 answered SIP 503 Service Unavailable"
        )

    def test_garbage_fails_and_aborts(self) -> None:
        d = self.monitor.check(FE1)
        protocol, transport = self.accept(0)
        protocol.dataReceived(b"220 smtp ready\r\n\r\n")
        assert str(self.failureResultOf(d).value) == (
            "port 5060 answered something that is not SIP"
        )
        assert transport.disconnected

    def test_a_close_without_answer_fails(self) -> None:
        d = self.monitor.check(FE1)
        protocol, _ = self.accept(0)
        protocol.connectionLost(Failure(ConnectionDone()))
        assert str(self.failureResultOf(d).value) == (
            "port 5060 closed without a final SIP response"
        )

    def test_a_hung_server_is_cut_off_at_the_timeout(self) -> None:
        d = self.monitor.check(FE1)
        _, transport = self.accept(0)
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        assert str(self.failureResultOf(d).value) == (
            "port 5060 connected, but no final SIP response came in time"
        )
        assert transport.disconnected  # aborted, not left open

    def test_a_connection_never_made_is_a_timeout(self) -> None:
        d = self.monitor.check(FE1)
        self.reactor.advance(2)
        assert str(self.failureResultOf(d).value) == "port 5060 timed out after 2 s"


def test_monitor_for_builds_the_configured_monitor() -> None:
    def pool(kind: MonitorType, **kw: Any) -> Pool:
        return Pool(
            "p",
            "p.example.com",
            "10.0.0.10",
            [FE1],
            ports=[Port(5060, PortProtocol.SIP), Port(5061, PortProtocol.SIPS)],
            monitor=Monitor(kind, **kw),
        )

    reactor = MemoryReactorClock()
    assert monitor_for(pool(MonitorType.TCP), reactor) == TCPMonitor(
        reactor, (5061, 5060), 2
    )
    assert isinstance(monitor_for(pool(MonitorType.TLS), reactor), TLSMonitor)
    sip = monitor_for(pool(MonitorType.SIP_OPTIONS), reactor)
    assert isinstance(sip, SIPOptionsMonitor)
    assert (sip.tls_ports, sip.fqdn) == ({5061}, "p.example.com")
    https = monitor_for(pool(MonitorType.HTTPS, url="/health", ports=[443]), reactor)
    assert isinstance(https, HTTPSMonitor)
    assert (https.ports, https.url) == ((443,), "/health")


def test_where_tls_is_terminated_tls_checks_verify_as_the_relay_does() -> None:
    """Issue 11: the checks took any certificate, so a server the relay
    refuses passed them and flapped, its clients' handshakes failing."""

    class Relay:
        def connecting(self, server: Server) -> Any:
            return ("the relay's TLS for", server.name)

    relay: Any = Relay()
    reactor = MemoryReactorClock()
    for kind in (MonitorType.TLS, MonitorType.SIP_OPTIONS):
        pool = Pool(
            "p",
            "p.example.com",
            "10.0.0.10",
            [FE1],
            ports=[Port(5061, PortProtocol.SIPS)],
            monitor=Monitor(kind),
        )
        checks: Any = monitor_for(pool, reactor, relay)
        assert checks.tls(FE1) == ("the relay's TLS for", "fe1")
        unverified: Any = monitor_for(pool, reactor)
        assert isinstance(unverified.tls, Unverified)
