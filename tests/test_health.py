"""Health: the rise/fall state machine, the TCP heartbeat, and the check loop."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ocsbal._listener import Listener
from ocsbal._pool import AdminState, RunningPool
from ocsbal._relay import Relay
from ocsbal.config import Monitor, Pool, Port, PortProtocol, Server
from ocsbal.health import CheckNotMadeError, HealthState, IMonitor
from ocsbal.monitors import HealthChecks

FE1 = Server("fe1", "127.0.1.11")


def thresholds(rise: int, fall: int) -> Monitor:
    return Monitor(rise=rise, fall=fall)


class TestHealthState:
    def test_a_new_server_is_up(self) -> None:
        assert HealthState().up

    def test_fall_failures_in_a_row_take_it_down(self) -> None:
        state, monitor = HealthState(), thresholds(2, 3)
        assert [state.record(False, monitor, "refused") for _ in range(3)] == [
            False,
            False,
            True,
        ]
        assert not state.up
        assert state.last == "refused"

    def test_a_success_restarts_the_count(self) -> None:
        state, monitor = HealthState(), thresholds(2, 2)
        state.record(False, monitor, "x")
        state.record(True, monitor)
        state.record(False, monitor, "x")
        assert state.up

    def test_rise_successes_in_a_row_bring_it_back(self) -> None:
        state, monitor = HealthState(), thresholds(3, 1)
        state.record(False, monitor, "x")
        assert [state.record(True, monitor) for _ in range(3)] == [False, False, True]
        assert state.up
        assert state.last == "ok"

    def test_a_failure_while_rising_starts_over(self) -> None:
        state, monitor = HealthState(), thresholds(2, 1)
        state.record(False, monitor, "x")
        state.record(True, monitor)
        state.record(False, monitor, "x")
        state.record(True, monitor)
        assert not state.up

    def test_the_streak_counts_the_results_against_its_health(self) -> None:
        state, monitor = HealthState(up=False), thresholds(3, 2)
        state.record(True, monitor)
        state.record(True, monitor)
        assert (state.up, state.streak) == (False, 2)  # 2 of rise = 3
        state.record(True, monitor)
        assert (state.up, state.streak) == (True, 0)
        state.record(False, monitor, "x")
        assert state.streak == 1  # 1 of fall = 2
        state.suspend("in maintenance")
        assert (state.up, state.streak) == (False, 0)

    def test_the_thresholds_in_force_count(self) -> None:
        """A reload's new rise and fall apply to a streak under way."""
        state = HealthState()
        state.record(False, thresholds(2, 3), "x")
        assert state.record(False, thresholds(2, 2), "x")  # the second of 2


@implementer(IMonitor)
class ScriptedMonitor:
    """A monitor whose checks the test answers."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, Deferred[None]]] = []

    def check(self, server: Server) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.checks.append((server.name, d))
        return d

    def answer(self, ok: bool, reason: str = "port 5061 refused") -> None:
        for _, d in self.checks:
            if not d.called:
                d.callback(None) if ok else d.errback(Exception(reason))


def makeServers(clock: Clock | None = None, **monitor: Any) -> RunningPool:
    pool = Pool(
        name="p",
        fqdn="p.example.com",
        vip="127.0.1.10",
        servers=[FE1, Server("fe2", "127.0.1.12")],
        ports=[Port(5060, PortProtocol.SIP)],
        scheduler="round-robin",
        monitor=Monitor(**monitor),
    )
    return RunningPool(pool, (clock or Clock()).seconds)


def test_since_is_when_a_server_last_went_up_or_down() -> None:
    clock = Clock()
    clock.advance(100)
    servers = makeServers(clock, rise=2, fall=2)
    fe1, fe2 = servers.backends.values()
    assert (fe1.health.since, fe2.health.since) == (100, 100)  # up from the start
    for at, ok, since in [
        (105, False, 100),
        (110, False, 110),  # the second of fall = 2: down
        (115, False, 110),
        (120, True, 110),
        (125, True, 125),  # the second of rise = 2: up
    ]:
        clock.advance(at - clock.seconds())
        servers.record(fe1, ok, "refused")
        assert fe1.health.since == since
    clock.advance(5)
    servers.set_state("fe2", AdminState.MAINT)  # taken down at once
    assert fe2.health.since == 130
    clock.advance(5)
    servers.set_state("fe2", AdminState.READY)  # still down, until it rises
    servers.set_state("fe2", AdminState.MAINT)
    assert fe2.health.since == 130
    (fe3,), _ = servers.reconfigure(
        attrs.evolve(servers.pool, servers=[FE1, Server("fe3", "127.0.1.13")])
    )
    assert (fe3.health.up, fe3.health.since) == (False, 135)  # joins down


class TestHealthChecks:
    def setup_method(self) -> None:
        self.clock = Clock()
        self.servers = makeServers(interval=5, rise=2, fall=2)
        self.monitor = ScriptedMonitor()
        jitters = iter([0.0, 0.5])
        self.checks = HealthChecks(
            self.servers, self.monitor, 5, self.clock, jitter=lambda: next(jitters)
        )
        self.checks.startService()
        self.clock.advance(0)  # fe1's delay is 0: its first check is due now

    def test_servers_start_checking_at_their_jittered_offsets(self) -> None:
        assert [n for n, _ in self.monitor.checks] == ["fe1"]
        self.clock.advance(2.5)
        assert [n for n, _ in self.monitor.checks] == ["fe1", "fe2"]
        self.monitor.answer(True)
        self.clock.advance(2.5)
        assert [n for n, _ in self.monitor.checks] == ["fe1", "fe2", "fe1"]

    def test_a_check_in_progress_delays_the_next(self) -> None:
        self.clock.advance(12)  # fe1's first check never answers
        assert [n for n, _ in self.monitor.checks].count("fe1") == 1

    def test_fall_failed_checks_take_a_server_down_and_log_it_once(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.clock.advance(2.5)
            for _ in range(3):
                self.monitor.answer(False)
                self.clock.advance(5)
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert [b.health.up for b in self.servers.backends.values()] == [False, False]
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        assert warnings == [
            "server fe1 (127.0.1.11) is down: port 5061 refused",
            "server fe2 (127.0.1.12) is down: port 5061 refused",
        ]

    def test_a_check_that_could_not_be_made_counts_neither_way(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            for _ in range(3):
                for _, d in self.monitor.checks:
                    if not d.called:
                        d.errback(CheckNotMadeError("port 5061: Too many open files"))
                self.clock.advance(5)
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert self.servers.backends["fe1"].health.up
        assert "server fe1 not checked, its state stays: port 5061: Too many " in (
            formatEvent(events[0])
        )
        fe1 = self.servers.backends["fe1"].health
        assert (fe1.passed, fe1.failed) == (0, 0)

    def test_each_check_is_counted_by_its_result(self) -> None:
        for ok in (True, False, False):
            self.monitor.answer(ok)
            self.clock.advance(5)
        fe1, fe2 = (b.health for b in self.servers.backends.values())
        assert (fe1.passed, fe1.failed) == (1, 2)
        assert (fe2.passed, fe2.failed) == (0, 2)  # its first check came at 2.5 s

    def test_rise_passed_checks_bring_it_back(self) -> None:
        self.clock.advance(2.5)
        for ok in (False, False, True, True):
            self.monitor.answer(ok)
            self.clock.advance(5)
        assert [b.health.up for b in self.servers.backends.values()] == [True, True]

    def test_stop_waits_for_the_check_in_progress_and_starts_no_more(self) -> None:
        d = self.checks.stopService()
        assert not d.called  # fe1's first check is still running
        self.monitor.answer(True)
        assert d.called
        self.clock.advance(60)
        assert [n for n, _ in self.monitor.checks] == ["fe1"]  # fe2 never started

    def test_a_server_in_maintenance_is_not_checked(self) -> None:
        self.servers.set_state("fe2", AdminState.MAINT)
        for _ in range(2):
            self.monitor.answer(True)
            self.clock.advance(5)
        assert [n for n, _ in self.monitor.checks] == ["fe1", "fe1", "fe1"]

    def test_watched_servers_are_checked_at_once_unwatched_ones_no_more(self) -> None:
        fe2 = self.servers.backend("fe2")
        self.checks.unwatch(fe2)
        (fe3,), _ = self.servers.reconfigure(
            attrs.evolve(
                self.servers.pool,
                servers=[*self.servers.pool.servers, Server("fe3", "127.0.1.13")],
            )
        )
        self.checks.watch(fe3)
        self.clock.advance(0)
        self.monitor.answer(True)
        self.clock.advance(5)
        assert [n for n, _ in self.monitor.checks] == ["fe1", "fe3", "fe1", "fe3"]
        assert fe3.health.up is False  # one success of rise = 2
        self.monitor.answer(True)
        assert fe3.health.up is True

    def test_unwatching_waits_for_the_check_in_progress(self) -> None:
        d = self.checks.unwatch(self.servers.backend("fe1"))
        assert not d.called
        self.monitor.answer(True)
        assert d.called


def test_a_down_server_is_never_picked_and_failed_connections_count() -> None:
    reactor = MemoryReactorClock()
    servers = makeServers(fall=1)
    relay = Relay(servers, reactor)
    fe1, fe2 = servers.backends.values()
    servers.record(fe1, False, "port 5061 refused")
    for port in range(40000, 40004):
        protocol = Listener(relay, Port(5060)).buildProtocol(None)
        protocol.makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        )
    assert {host for host, *_ in reactor.tcpClients} == {"127.0.1.12"}
    # A failed connection is a failed heartbeat (fall = 1 here).
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(
        reactor.connectors[0], Failure(ConnectionRefusedError())
    )
    assert not fe2.health.up
    assert fe2.health.last.startswith("a connection failed: Connection was refused")


@pytest.mark.parametrize(
    ("ports", "monitor_ports", "heartbeat"),
    [
        ((5060, 5061, 135, 444), (), (5061, 5060, 444)),
        ((5060, 8404), (), (5060,)),
        ((8404, 135), (), (8404,)),
        ((5060,), (444, 5061), (444, 5061)),
    ],
)
def test_heartbeat_ports(
    ports: tuple[int, ...], monitor_ports: tuple[int, ...], heartbeat: tuple[int, ...]
) -> None:
    pool = Pool(
        "p",
        "p.example.com",
        "10.0.0.10",
        [Server("a", "10.0.0.11")],
        ports=[Port(n) for n in ports],
        monitor=Monitor(ports=monitor_ports),
    )
    assert pool.heartbeat_ports == heartbeat
