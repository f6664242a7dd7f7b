"""The relay's limits and source addresses, on a memory reactor."""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectError, ConnectionDone, getConnectError
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from ocsbal._listener import Listener
from ocsbal._sections import Limits
from ocsbal.config import Server
from test_relay import SIP, Harness


def out_of_ports(h: Harness, index: int = -1) -> None:
    """Let attempt ``index`` fail as a source address out of ports does."""
    error = getConnectError((errno.EADDRNOTAVAIL, "Cannot assign requested address"))
    h.reactor.tcpClients[index][2].clientConnectionFailed(
        h.reactor.connectors[index], Failure(error)
    )


def logged(run: Any) -> list[str]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [formatEvent(e) for e in events if e["log_level"] >= LogLevel.info]


def arrive(h: Harness, host: str, port: int = 40000) -> Any:
    """A client from ``host`` connects: its protocol, or None if refused."""
    peer = IPv4Address("TCP", host, port)
    protocol = Listener(h.relay, SIP).buildProtocol(peer)
    if protocol is not None:
        protocol.makeConnection(StringTransport(peerAddress=peer))
    return protocol


def test_server_connections_spread_over_the_source_addresses() -> None:
    h = Harness(source="127.0.1.98, 127.0.1.99")
    for port in range(40000, 40004):
        h.accept(port)
    binds = [bind for *_, bind in h.reactor.tcpClients]
    assert binds == [("127.0.1.98", 0), ("127.0.1.99", 0)] * 2


def test_a_source_out_of_ports_is_skipped_and_the_server_not_blamed() -> None:
    h = Harness(servers=1, source="127.0.1.98, 127.0.1.99")
    lines = logged(lambda: (h.accept(), out_of_ports(h)))
    assert [bind for *_, bind in h.reactor.tcpClients] == [
        ("127.0.1.98", 0),
        ("127.0.1.99", 0),
    ]
    h.succeed()
    fe0 = h.servers.backend("fe0")
    assert (fe0.health.up, fe0.health.last) == (True, "not checked yet")
    assert lines == [
        "source address 127.0.1.98 has no port left for connections to "
        "127.0.1.11:5060; the next is tried"
    ]
    h.accept(40001)  # the tired address rests: the next goes to the other
    assert h.reactor.tcpClients[-1][4] == ("127.0.1.99", 0)


def test_every_source_out_of_ports_closes_the_client_blaming_no_server() -> None:
    h = Harness(servers=2, retries=1, source="127.0.1.98, 127.0.1.99")
    _, client = h.accept()
    out_of_ports(h)
    out_of_ports(h)
    assert client.disconnecting
    assert len(h.reactor.tcpClients) == 2  # no other server tried: none would do
    assert all(b.health.last == "not checked yet" for b in h.servers.backends.values())


def test_one_source_out_of_ports_is_this_hosts_trouble_too() -> None:
    h = Harness(servers=2, retries=1, source="127.0.1.99")
    _, client = h.accept()
    out_of_ports(h)
    assert client.disconnecting
    assert h.servers.backend("fe0").health.last == "not checked yet"


def test_other_connect_errors_still_count_against_the_server() -> None:
    h = Harness(servers=2, retries=1, source="127.0.1.98, 127.0.1.99")
    h.accept()
    h.reactor.tcpClients[-1][2].clientConnectionFailed(
        h.reactor.connectors[-1], Failure(ConnectError(errno.EHOSTUNREACH, "no"))
    )
    assert h.servers.backend("fe0").health.last.startswith("a connection failed")


def test_a_source_over_its_connections_is_closed_unread_and_counted() -> None:
    h = Harness(limits=Limits(per_source_connections=2))
    first = arrive(h, "192.0.2.7", 40000)
    arrive(h, "192.0.2.7", 40001)
    lines = logged(lambda: arrive(h, "192.0.2.7", 40002))
    assert arrive(h, "192.0.2.8") is not None  # another address is its own
    assert lines == [
        "refused connection from 192.0.2.7 to port 5060: over "
        "per_source_connections (2)"
    ]
    assert h.relay.limited == {"per_source_connections": 1}
    assert len(h.reactor.tcpClients) == 3  # no server was asked for the refused
    first.connectionLost(Failure(ConnectionDone()))
    assert arrive(h, "192.0.2.7", 40003) is not None


def test_a_source_over_its_rate_is_refused_until_the_bucket_refills() -> None:
    h = Harness(limits=Limits(per_source_rate=2))
    assert [arrive(h, "192.0.2.7", p) is not None for p in range(40000, 40003)] == [
        True,
        True,
        False,
    ]
    h.reactor.advance(0.5)
    assert arrive(h, "192.0.2.7", 40003) is not None
    assert h.relay.limited == {"per_source_rate": 1}


def test_maxconn_refusals_are_counted_apart_from_no_server() -> None:
    h = Harness(servers=1)
    h.servers.backend("fe0").server = Server("fe0", "127.0.1.11", maxconn=1)
    h.accept()
    lines = logged(lambda: h.accept(40001))
    assert lines == [
        "rejected connection from 127.0.0.1:40001 to port 5060: every server that "
        "could take it has its maxconn: fe0 (1)"
    ]
    assert (h.relay.limited, h.relay.rejected) == ({"maxconn": 1}, {})
