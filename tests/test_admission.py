"""How many clients a process connects at once: the count, and the relay's."""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock

from ocsbal._admission import AT_ONCE, Admission
from ocsbal._listener import pause_accepting
from ocsbal._relay import Relay
from ocsbal._report import figures
from test_relay import Harness


def test_accepting_stops_at_the_limit_and_goes_on_at_half() -> None:
    told: list[bool] = []
    admission = Admission(told.append, most=4)
    for _ in range(3):
        admission.began()
    assert told == []
    admission.began()
    assert (told, admission.paused) == ([True], True)
    admission.began()  # one already accepted, when the ports stopped
    admission.ended()
    admission.ended()
    assert told == [True]  # three left: more than half
    admission.ended()
    assert (told, admission.paused, admission.connecting) == ([True, False], False, 2)
    for _ in range(4):
        admission.began()
    assert (told, admission.pauses) == ([True, False, True], 2)


def test_the_relay_counts_clients_while_they_connect_to_servers() -> None:
    """From the pick to the server's connection, or the client's end."""
    h = Harness()
    told: list[bool] = []
    h.relay = Relay(h.servers, h.reactor, pause=told.append)
    clients = [h.accept(40000 + n) for n in range(AT_ONCE)]
    assert (h.relay.admission.connecting, told) == (AT_ONCE, [True])
    assert figures(h.relay)["accept_pauses"] == 1
    for index in range(AT_ONCE // 2):
        h.succeed(index)
    assert (h.relay.admission.connecting, told) == (AT_ONCE // 2, [True, False])
    h.refuse(AT_ONCE // 2)  # retried on the next server: still connecting
    assert h.relay.admission.connecting == AT_ONCE // 2
    protocol, _ = clients[-1]
    protocol.connectionLost(None)  # gone while connecting
    assert h.relay.admission.connecting == AT_ONCE // 2 - 1


def test_a_tcp_port_stops_reading_while_paused_and_reads_again() -> None:
    reactor = MemoryReactorClock()
    port = tcp.Port(0, ServerFactory(), 50, "127.0.0.1", reactor)
    port.connected = True  # as listening: no socket is needed to be read
    port.startReading()
    pause_accepting([port], True)
    assert port not in reactor.getReaders()
    pause_accepting([port], False)
    assert port in reactor.getReaders()
    pause_accepting([port], True)
    port.disconnecting = True  # being closed: it stays unread
    pause_accepting([port], False)
    assert port not in reactor.getReaders()
