"""The relay, driven deterministically: no sockets, a memory reactor and clock."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, cast

import attrs
import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    ConnectBindError,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from ocsbal._listener import Listener
from ocsbal._pool import AdminState, RunningPool, UnknownServerError
from ocsbal._relay import Phase, Relay
from ocsbal._report import connections_report
from ocsbal._sides import _write_through
from ocsbal._sweep import closing_time, sweep
from ocsbal.config import Pool, Port, PortProtocol, Server
from ocsbal.scheduling import LeastConnections
from pools import make_pool

SIP = Port(5060, PortProtocol.SIP)


def makePool(servers: int = 3, **kw: Any) -> Pool:
    """``servers`` servers, fe0 on 127.0.1.11 and on, on the SIP port."""
    kw.setdefault("ports", (SIP,))
    return make_pool(
        *(Server(f"fe{i}", f"127.0.1.{11 + i}") for i in range(servers)), **kw
    )


class Harness:
    """A balancer on a memory reactor, with helpers to play the network."""

    def __init__(self, **kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        #: Bytes each transport holds that its peer has not taken yet.
        self.unsent: dict[object, int] = {}
        self.servers = RunningPool(makePool(**kw), self.reactor.seconds)
        self.relay = Relay(
            self.servers, self.reactor, unsent=lambda t: self.unsent.get(t, 0)
        )

    def accept(self, client_port: int = 40000) -> tuple[Any, StringTransport]:
        factory = Listener(self.relay, SIP)
        peer = IPv4Address("TCP", "127.0.0.1", client_port)
        protocol = factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def attempts(self) -> list[str]:
        return [host for host, *_ in self.reactor.tcpClients]

    def succeed(self, index: int = -1) -> tuple[Any, StringTransport]:
        """Let connection attempt ``index`` succeed."""
        host, port, factory, *_ = self.reactor.tcpClients[index]
        factory.doStart()  # as a real connector does
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self, index: int = -1) -> None:
        """Let connection attempt ``index`` fail."""
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def active(self) -> dict[str, int]:
        return {b.name: b.active for b in self.servers.backends.values()}


def test_client_is_paused_until_a_server_is_connected() -> None:
    """Nothing is read from the client before there is somewhere to send it."""
    h = Harness()
    _, client = h.accept()
    assert client.producerState == "paused"
    assert h.attempts() == ["127.0.1.11"]
    assert h.reactor.tcpClients[0][1] == 5060  # the server's port is the VIP port
    h.succeed()
    assert client.producerState == "producing"


def test_a_connected_server_side_keeps_no_deferred_of_its_connecting() -> None:
    """Once connected, neither the side nor its factory keeps ``reached``.

    The connector keeps its factory while the connection lasts, hours on a
    SIP port: the fired Deferred and its canceller must not stay with it.
    """
    h = Harness()
    h.accept()
    factory = h.reactor.tcpClients[-1][2]
    server, _ = h.succeed()
    assert (server.reached, factory.reached) == (None, None)


def test_bytes_are_relayed_both_ways_unchanged() -> None:
    h = Harness()
    client, client_t = h.accept()
    server, server_t = h.succeed()
    request = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n\x00\xff"
    client.dataReceived(request)
    server.dataReceived(b"SIP/2.0 200 OK\r\n\r\n")
    assert server_t.value() == request
    assert client_t.value() == b"SIP/2.0 200 OK\r\n\r\n"


def test_each_transport_is_the_producer_of_the_other() -> None:
    """Flow control: a slow reader on one side pauses reading on the other."""
    h = Harness()
    _, client_t = h.accept()
    _, server_t = h.succeed()
    assert client_t.streaming
    assert server_t.streaming
    client_t.producer.pauseProducing()  # the client reads too slowly
    assert server_t.producerState == "paused"
    client_t.producer.resumeProducing()
    assert server_t.producerState == "producing"
    server_t.producer.pauseProducing()  # the server reads too slowly
    assert client_t.producerState == "paused"


def test_refused_server_is_retried_on_another_never_the_same_twice() -> None:
    h = Harness(servers=3, retries=2)
    _, client_t = h.accept()
    h.refuse()
    h.refuse()
    assert h.attempts() == ["127.0.1.11", "127.0.1.12", "127.0.1.13"]
    h.succeed()
    assert not client_t.disconnecting
    assert h.active() == {"fe0": 0, "fe1": 0, "fe2": 1}


def test_retries_are_bounded_then_the_client_is_closed() -> None:
    h = Harness(servers=3, retries=1)
    _, client_t = h.accept()
    h.refuse()
    h.refuse()
    assert len(h.attempts()) == 2
    assert client_t.disconnecting
    assert h.active() == {"fe0": 0, "fe1": 0, "fe2": 0}


def test_no_server_available_closes_the_client_without_connecting() -> None:
    h = Harness(servers=1, retries=5)
    _, client_t = h.accept()
    h.refuse()
    assert len(h.attempts()) == 1  # the only server failed; no second try on it
    assert client_t.disconnecting


@pytest.mark.parametrize("retries", [0, 2])
def test_rejection_is_logged_with_its_reason(retries: int) -> None:
    """The server's failure, also when retries are left but no other server."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness(servers=1, retries=retries)
        h.accept()
        h.refuse()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(lines) == 2
    assert "to server fe0 (127.0.1.11:5060) failed" in lines[0]
    assert "Connection was refused" in lines[0]
    assert lines[1].startswith("rejected connection from")
    assert "server fe0 failed" in lines[1]


def test_a_relayed_connection_logs_nothing() -> None:
    """Logging is for failures: a busy pool's healthy connections are silent."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness()
        client, _ = h.accept()
        h.succeed()
        client.connectionLost(Failure(ConnectionRefusedError()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [formatEvent(e) for e in events] == []


def test_active_counts_follow_connections_open_and_closed() -> None:
    h = Harness(servers=2)
    h.accept(40001)
    h.succeed()
    h.accept(40002)
    s2, _ = h.succeed()
    assert h.active() == {"fe0": 1, "fe1": 1}
    s2.connectionLost(Failure(ConnectionRefusedError()))
    assert h.active() == {"fe0": 1, "fe1": 0}


def test_close_on_either_side_closes_the_other() -> None:
    h = Harness()
    client, client_t = h.accept()
    server, server_t = h.succeed()
    server.connectionLost(Failure(Exception("gone")))
    assert client_t.disconnecting
    h2 = Harness()
    client, client_t = h2.accept()
    server, server_t = h2.succeed()
    client.connectionLost(Failure(Exception("gone")))
    assert server_t.disconnecting
    assert not h2.relay.splices


def test_client_gone_while_connecting_cancels_the_attempt() -> None:
    h = Harness()
    client, _ = h.accept()
    client.connectionLost(Failure(Exception("client went away")))
    assert h.reactor.connectors[0].stoppedConnecting
    assert h.active() == {"fe0": 0, "fe1": 0, "fe2": 0}
    assert not h.relay.splices


def test_idle_connection_is_closed_by_the_sweep_and_activity_defers_it() -> None:
    h = Harness(idle_timeout=60)
    client, client_t = h.accept()
    _, server_t = h.succeed()
    h.reactor.advance(50)
    client.dataReceived(b"\r\n\r\n")  # a keep-alive is activity
    h.reactor.advance(50)
    sweep(h.relay)
    assert not client_t.disconnecting
    h.reactor.advance(10)
    sweep(h.relay)
    assert client_t.disconnecting
    assert server_t.disconnecting


def test_an_idle_close_is_logged_with_the_client_port_and_server() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        h = Harness(idle_timeout=60)
        h.accept()
        h.succeed()
        [splice] = h.relay.splices
        peer = cast(IPv4Address, splice.peer)
        h.reactor.advance(61)
        sweep(h.relay)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "idle" in e.get("log_format", "")]
    assert lines == [
        f"closing idle connection from {peer.host}:{peer.port} on port 5060 "
        "(server fe0)"
    ]


def test_idle_connection_that_cannot_flush_is_aborted_at_the_next_sweep() -> None:
    """Nothing moved for the timeout: once closing, it is stuck at once."""
    h = Harness(idle_timeout=60)
    _, client_t = h.accept()
    h.succeed()
    h.reactor.advance(60)
    sweep(h.relay)
    assert client_t.disconnecting
    assert not client_t.disconnected
    h.reactor.advance(3)
    sweep(h.relay)
    assert client_t.disconnected  # StringTransport's abortConnection


def test_bytes_and_connections_are_counted_per_server_and_port() -> None:
    h = Harness(servers=1)
    client, _ = h.accept()
    server, _ = h.succeed()
    client.dataReceived(b"x" * 10)
    server.dataReceived(b"y" * 3)
    fe0 = h.servers.backend("fe0")
    assert (fe0.total, fe0.sent, fe0.received) == (1, 10, 3)
    server.connectionLost(Failure(Exception("done")))
    client.connectionLost(Failure(Exception("done")))
    assert (fe0.total, fe0.sent, fe0.received, fe0.active) == (1, 10, 3, 0)
    h.servers.backends["fe0"].health.suspend("test")
    h.accept()
    assert h.relay.accepted == {5060: 2}
    assert h.relay.rejected == {5060: 1}


def test_unknown_server_names_say_so() -> None:
    h = Harness()
    with pytest.raises(UnknownServerError, match="no server named fe9 in the pool"):
        h.servers.backend("fe9")


def test_drained_and_maintained_servers_get_no_new_connections() -> None:
    h = Harness(servers=3)
    h.servers.set_state("fe0", AdminState.DRAIN)
    h.servers.set_state("fe1", AdminState.MAINT)
    for port in range(40001, 40004):
        h.accept(port)
    assert h.attempts() == ["127.0.1.13"] * 3
    assert h.servers.backend("fe1").health.up is False  # maint must rise again
    h.servers.set_state("fe0", AdminState.READY)
    h.accept(40004)
    assert h.attempts()[-1] == "127.0.1.11"


def reconfigured(h: Harness, *servers: Server) -> tuple[list[str], list[str]]:
    pool = attrs.evolve(h.servers.pool, servers=servers)
    added, removed = h.servers.reconfigure(pool)
    return [b.name for b in added], [b.name for b in removed]


def test_a_removed_server_keeps_its_connections_until_they_close() -> None:
    h = Harness(servers=2)
    fe0 = h.servers.backend("fe0")
    _, client_t = h.accept(40001)
    server, _ = h.succeed()
    assert reconfigured(h, Server("fe1", "127.0.1.12")) == ([], ["fe0"])
    assert list(h.servers.backends) == ["fe1"]
    assert h.servers.leaving == {fe0}
    assert not client_t.disconnecting
    h.accept(40002)
    assert h.attempts()[-1] == "127.0.1.12"
    server.connectionLost(Failure(Exception("done")))
    assert h.servers.leaving == set()


def test_added_servers_and_new_addresses_join_down_others_keep_their_state() -> None:
    h = Harness(servers=2)
    fe0 = h.servers.backend("fe0")
    h.servers.set_state("fe0", AdminState.DRAIN)
    added, removed = reconfigured(
        h,
        Server("fe0", "127.0.1.11", weight=7),
        Server("fe1", "127.0.1.99"),
        Server("fe2", "127.0.1.13"),
    )
    assert (added, removed) == (["fe1", "fe2"], ["fe1"])
    assert h.servers.backend("fe0") is fe0
    assert (fe0.weight, fe0.state, fe0.health.up) == (7, AdminState.DRAIN, True)
    assert [b.health.up for b in h.servers.backends.values()] == [True, False, False]
    assert not h.servers.leaving  # the old fe1 had no connection: gone at once


def test_a_new_scheduler_or_idle_timeout_takes_effect_on_reconfigure() -> None:
    h = Harness()
    pool = attrs.evolve(h.servers.pool, scheduler="least-connections", idle_timeout=9)
    h.servers.reconfigure(pool)
    assert isinstance(h.servers.scheduler, LeastConnections)
    assert h.relay.pool.idle_timeout == 9


REGISTER = (
    b"REGISTER sip:contoso.com SIP/2.0\r\nTo: <sip:alice@contoso.com>\r\n"
    b"Call-ID: c1\r\nCSeq: 7 REGISTER\r\nContact: <sip:alice@10.1.0.5>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REGISTERED = (
    b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 7 REGISTER\r\n"
    b"Contact: <sip:alice@10.1.0.5>;expires=900\r\nContent-Length: 0\r\n\r\n"
)


def test_sip_is_followed_on_sip_ports_without_changing_a_byte() -> None:
    h = Harness()
    client, client_t = h.accept()
    server, server_t = h.succeed()
    h.reactor.advance(10)
    for piece in (REGISTER[:30], REGISTER[30:], b"\r\n\r\n"):
        client.dataReceived(piece)
    server.dataReceived(REGISTERED + b"\r\n")
    assert server_t.value() == REGISTER + b"\r\n\r\n"
    assert client_t.value() == REGISTERED + b"\r\n"
    [splice] = h.relay.splices
    assert splice.sip is not None
    assert splice.sip.bindings == {"sip:alice@contoso.com": 910}
    assert splice.sip.keepalives == 2  # the client's ping and the server's pong


def test_unparseable_sip_stops_inspection_and_the_relay_goes_on() -> None:
    h = Harness()
    client, _ = h.accept()
    _, server_t = h.succeed()
    client.dataReceived(b"\x16\x03\x01 not sip\r\n\r\n")
    client.dataReceived(REGISTER)
    assert server_t.value() == b"\x16\x03\x01 not sip\r\n\r\n" + REGISTER
    [splice] = h.relay.splices
    assert splice.sip is not None
    assert splice.sip.gave_up == "bad-start-line"
    assert splice.client.inspector is None
    assert splice.server is not None
    assert splice.server.inspector is None
    assert h.relay.sip.gave_up == {"bad-start-line": 1}
    assert splice.sip.bindings == {}


def registered(h: Harness) -> tuple[Any, StringTransport]:
    """A client registers for 900 s at t = 0; return its side and transport."""
    client, client_t = h.accept()
    server, _ = h.succeed()
    client.dataReceived(REGISTER)
    server.dataReceived(REGISTERED)
    return client, client_t


def test_a_registered_connection_outlives_the_idle_timeout_until_expiry_and_grace() -> (
    None
):
    h = Harness(idle_timeout=60, registration_grace=120)
    _, client_t = registered(h)
    h.reactor.advance(1019)
    sweep(h.relay)
    assert not client_t.disconnecting  # 900 s granted + 120 s grace
    h.reactor.advance(2)
    sweep(h.relay)
    assert client_t.disconnecting


def test_a_missed_refresh_is_reported_once_and_reaped_if_asked() -> None:
    for reap in (False, True):
        h = Harness(idle_timeout=3600, registration_grace=120, reap_expired=reap)
        client, client_t = registered(h)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            for _ in range(3):
                h.reactor.advance(500)
                client.dataReceived(b"\r\n\r\n")  # keep-alives, but no refresh
                sweep(h.relay)
        finally:
            globalLogPublisher.removeObserver(events.append)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        assert warnings == [
            "connection from 127.0.0.1:40000 "
            "missed its registration refresh (sip:alice@contoso.com) by more than "
            "120 s"
        ]
        assert client_t.disconnecting is reap
        closing = [formatEvent(e) for e in events if "closing" in e["log_format"]]
        assert closing == reap * [
            "closing connection from 127.0.0.1:40000 on port 5060 (server fe0): "
            "its registration was not refreshed"
        ]


def test_the_closing_time_follows_the_registration() -> None:
    h = Harness(idle_timeout=60, registration_grace=120)
    registered(h)  # for 900 s at t = 0
    [splice] = h.relay.splices
    assert closing_time(splice) == (1020, "registration")
    reaping = Harness(idle_timeout=3600, registration_grace=120, reap_expired=True)
    registered(reaping)
    [splice] = reaping.relay.splices
    assert closing_time(splice) == (1020, "missed-refresh")


def test_full_nat_connects_from_the_pools_source_address() -> None:
    h = Harness(source="127.0.1.99")
    h.accept()
    assert h.reactor.tcpClients[-1][4] == ("127.0.1.99", 0)
    plain = Harness()
    plain.accept()
    assert plain.reactor.tcpClients[-1][4] is None  # the routing table chooses


def test_half_nat_connects_from_the_clients_own_address() -> None:
    h = Harness(kind="edge", nat="half")
    h.accept(client_port=40001)
    host, port, *_, bind = h.reactor.tcpClients[-1]
    assert (host, port, bind) == ("127.0.1.11", 5060, ("127.0.0.1", 0))


def test_writes_go_straight_to_the_socket_and_stay_in_order_under_back_pressure() -> (
    None
):
    """The write-through path: at once while nothing waits, else behind it."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reactor = MemoryReactorClock()
    transport = tcp.Connection(ours, Protocol(), reactor)
    transport.connected = True  # as the reactor's accept makes it

    def write(data: bytes) -> None:
        _write_through(transport, data)

    write(b"hello")
    assert theirs.recv(100) == b"hello"  # sent at once, no reactor turn
    assert reactor.getWriters() == []

    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
    write(big)
    received = bytearray(theirs.recv(1 << 20))  # room in the socket again...
    write(b"after")  # ...yet this must queue behind what it did not take
    assert reactor.getWriters() == [transport]
    while len(received) < len(big) + 5:
        with contextlib.suppress(BlockingIOError):
            received += theirs.recv(1 << 20)
        transport.doWrite()
    assert bytes(received) == big + b"after"
    ours.close()
    theirs.close()


def sweep_until(h: Harness, done: Any, limit: float = 100) -> float:
    """Sweep every second until ``done()``; return the clock's time then."""
    while not done():
        assert h.reactor.seconds() < limit
        h.reactor.advance(1)
        sweep(h.relay)
    return h.reactor.seconds()


def test_a_side_left_flushing_is_kept_while_its_peer_takes_bytes() -> None:
    """Issue 11: the client is gone and the server side still flushes to a
    slow server.  It was aborted a sweep later, whatever the progress, and
    the reset threw away what the kernel held; now it is aborted only once
    its peer has taken nothing for the idle timeout."""
    h = Harness(idle_timeout=10)
    client, _ = h.accept()
    server, server_t = h.succeed()
    h.unsent[server_t] = 500_000
    client.connectionLost(Failure(ConnectionDone()))
    assert server_t.disconnecting  # asked to close, once flushed
    for _ in range(30):  # the server takes 10 kB a second
        h.reactor.advance(1)
        h.unsent[server_t] -= 10_000
        sweep(h.relay)
        assert not server_t.disconnected
    # Then nothing, from 30 s: aborted 10 s later (StringTransport's abort).
    assert sweep_until(h, lambda: server_t.disconnected) == 40
    server.connectionLost(Failure(ConnectionDone()))  # as the abort ends it
    assert h.relay.flushing == h.relay.draining == set()


def test_bytes_a_peer_takes_are_activity_and_a_close_waits_for_them() -> None:
    """Issue 11: idleness was judged by the bytes read alone, so a client
    still draining what its server had sent was closed as idle, then reset."""
    h = Harness(idle_timeout=10)
    _, client_t = h.accept()
    server, _ = h.succeed()
    server.dataReceived(b"x" * 1000)
    h.unsent[client_t] = 1000
    for _ in range(60):  # a byte every second: never idle
        h.reactor.advance(1)
        h.unsent[client_t] -= 1
        sweep(h.relay)
        assert not client_t.disconnecting
    # It stops taking at 60 s: closed after what waits, 10 s on; it may
    # yet take it, so it is aborted only once it has taken nothing for 10 s
    # more... which, counted from 60 s, is at once.
    assert sweep_until(h, lambda: client_t.disconnecting) == 70
    assert not client_t.disconnected
    assert sweep_until(h, lambda: client_t.disconnected) == 71


def test_what_waits_for_a_peer_is_watched_a_second_before_it_counts_as_idle() -> None:
    """The first look at bytes waiting cannot tell whether they move."""
    h = Harness(idle_timeout=10)
    _, client_t = h.accept()
    h.succeed()
    h.unsent[client_t] = 1000  # and never taken
    h.reactor.advance(10)
    sweep(h.relay)
    assert not client_t.disconnecting
    h.reactor.advance(0.5)
    sweep(h.relay)
    assert not client_t.disconnecting
    h.reactor.advance(0.5)
    sweep(h.relay)
    assert client_t.disconnecting
    assert sweep_until(h, lambda: client_t.disconnected) == 20


def test_with_nothing_waiting_an_idle_connection_closes_at_the_timeout() -> None:
    h = Harness(idle_timeout=10)
    _, client_t = h.accept()
    h.succeed()
    h.reactor.advance(9.9)
    sweep(h.relay)
    assert not client_t.disconnecting
    h.reactor.advance(0.1)
    sweep(h.relay)
    assert client_t.disconnecting


def test_a_connection_this_host_cannot_make_is_no_servers_fault() -> None:
    """Out of descriptors here: the client is closed, no server marked down."""
    h = Harness(retries=2)
    _, client_t = h.accept()
    factory = h.reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(
        h.reactor.connectors[-1],
        Failure(ConnectBindError(24, "Too many open files")),
    )
    assert client_t.disconnecting
    assert h.attempts() == ["127.0.1.11"]  # no other server tried
    assert h.servers.backends["fe0"].health.last == "not checked yet"


def test_a_server_drained_or_removed_while_connecting_never_gets_the_connection() -> (
    None
):
    """Issue 11: the attempt in flight is dropped and the next server taken."""
    for change in ("drain", "remove", "maint"):
        h = Harness(servers=2, retries=1)
        client, _ = h.accept()
        assert h.attempts() == ["127.0.1.11"]
        if change == "remove":
            reconfigured(h, Server("fe1", "127.0.1.12"))
        else:
            h.servers.set_state("fe0", AdminState(change))
        _, abandoned = h.succeed()  # the connection to fe0 completes now
        assert abandoned.disconnecting, change
        assert h.attempts() == ["127.0.1.11", "127.0.1.12"], change
        _, server_t = h.succeed()
        client.dataReceived(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        assert abandoned.value() == b"", change
        assert server_t.value() == b"OPTIONS sip:x SIP/2.0\r\n\r\n", change
        [splice] = h.relay.splices
        assert splice.backend is h.servers.backend("fe1"), change
        assert h.servers.backend("fe1").active == 1


def test_with_no_other_server_a_connection_to_a_drained_one_is_rejected() -> None:
    h = Harness(servers=1, retries=2)
    _, client_t = h.accept()
    h.servers.set_state("fe0", AdminState.DRAIN)
    _, abandoned = h.succeed()
    assert abandoned.disconnecting
    assert client_t.disconnecting
    assert h.active() == {"fe0": 0}
    assert h.servers.backend("fe0").health.up  # nothing wrong with it


def test_each_missed_refresh_is_reported_once_and_a_refresh_clears_it() -> None:
    """Issue 11: the flag was never cleared, and a second lapse never logged."""
    h = Harness(idle_timeout=3600, registration_grace=120)
    client, _ = h.accept()
    server, _ = h.succeed()

    def register() -> None:
        client.dataReceived(REGISTER)
        server.dataReceived(REGISTERED)  # 900 s from now

    def missed() -> bool:
        [connection] = connections_report(h.relay)
        return bool(connection["sip"]["missed_refresh"])

    register()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for at, refresh in [(1100, False), (1200, False), (1300, True), (2400, False)]:
            h.reactor.advance(at - h.reactor.seconds())
            if refresh:
                register()
            sweep(h.relay)
            assert missed() is (not refresh), at
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 2  # at 1100 s, and again at 2400 s
    assert all("missed its registration refresh" in w for w in warnings)


def test_a_splice_goes_through_its_phases_forward_only() -> None:
    h = Harness()
    client, _ = h.accept()
    [splice] = h.relay.splices
    assert splice.phase is Phase.CONNECTING  # no TLS: nothing to wait for
    server, _ = h.succeed()
    assert splice.phase is Phase.RELAYING
    server.connectionLost(Failure(ConnectionDone()))
    assert splice.phase is Phase.CLOSING  # the client's side finishes
    client.connectionLost(Failure(ConnectionDone()))
    assert splice.phase is Phase.CLOSED
    with pytest.raises(RuntimeError, match=r"cannot go from Phase\.CLOSED"):
        splice.close()


def test_a_refused_client_closes_and_one_gone_while_connecting_is_closed() -> None:
    h = Harness(servers=1, retries=0)
    client, _ = h.accept()
    [splice] = h.relay.splices
    h.refuse()
    assert splice.phase is Phase.CLOSING
    client.connectionLost(Failure(ConnectionDone()))
    assert splice.phase is Phase.CLOSED
    h2 = Harness()
    client, _ = h2.accept()
    [splice] = h2.relay.splices
    client.connectionLost(Failure(ConnectionDone()))
    assert splice.phase is Phase.CLOSED


def test_what_waits_for_the_last_client_finds_its_splice_closed() -> None:
    """A stop waits for no client to be left, then may end the server's side
    at once (a reactor disconnecting everything): the splice must already be
    as it is once its client is gone."""
    h = Harness()
    client, _ = h.accept()
    server, _ = h.succeed()
    [splice] = h.relay.splices
    h.relay.when_empty().addCallback(
        lambda _: server.connectionLost(Failure(ConnectionDone()))
    )
    client.connectionLost(Failure(ConnectionDone()))
    assert splice.phase is Phase.CLOSED
    assert h.relay.flushing == set()
