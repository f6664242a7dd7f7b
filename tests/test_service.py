"""PoolService on a memory reactor: binding, the idle sweep, and stopping."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ocsbal import OCS_PORTS, ConfigError, Pool, PoolService, Port, PortProtocol, Server
from ocsbal._listener import Listener
from ocsbal._pool import AdminState, LastServerError, UnknownServerError
from ocsbal.admin import AdminTokenError
from ocsbal.config import Admin, Monitor, TLSMode, TLSSettings, load, render
from ocsbal.service import ConfigReloader, NetworkSetupError
from pools import make_pool


class FakePort:
    """A listening port that remembers whether it was stopped."""

    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class Reactor(MemoryReactorClock):
    """A memory reactor that keeps its ports, and on which one port may be taken."""

    def __init__(self, taken: int | None = None) -> None:
        super().__init__()
        self.taken = taken
        self.ports: list[FakePort] = []

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        if port == self.taken:
            raise CannotListenError(
                interface, port, OSError(98, "Address already in use")
            )
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(FakePort())
        return self.ports[-1]


def open_connection(reactor: MemoryReactorClock) -> tuple[StringTransport, Any]:
    """A client connects to the first listener, and its server connects too."""
    _, factory, _, _ = reactor.tcpServers[0]
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    _, _, client_factory, *_ = reactor.tcpClients[-1]
    client_factory.buildProtocol(None).makeConnection(StringTransport())
    return transport, protocol


class PoolServiceTests(SynchronousTestCase):
    def test_binds_every_ocs_port_on_the_vip(self) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(), reactor)
        service.privilegedStartService()
        service.startService()
        bound = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        assert bound == [(p.number, "127.0.1.10") for p in OCS_PORTS]
        assert len(bound) == 12

    def test_start_without_privileged_start_binds_too(self) -> None:
        """Embedders who only call startService still get their listeners."""
        reactor = Reactor()
        PoolService(make_pool(), reactor).startService()
        assert len(reactor.tcpServers) == 12

    def test_a_port_that_cannot_bind_fails_start_and_releases_the_others(self) -> None:
        reactor = Reactor(taken=444)
        service = PoolService(make_pool(), reactor)
        with pytest.raises(CannotListenError) as raised:
            service.privilegedStartService()
        assert "127.0.1.10:444" in str(raised.value)
        assert reactor.tcpServers  # some were bound before 444...
        assert all(p.stopped for p in reactor.ports)  # ...and all released

    def test_a_vip_this_host_does_not_hold_stops_the_start_binding_nothing(
        self,
    ) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(vip="192.0.2.10"), reactor)
        with pytest.raises(NetworkSetupError) as raised:
            service.privilegedStartService()
        assert str(raised.value) == (
            "[pool] vip = 192.0.2.10 is not an address of this host: add it to an "
            "interface, or set freebind = yes on a standby that binds it before "
            "it holds it"
        )
        assert reactor.tcpServers == []

    def test_with_freebind_the_vip_is_bound_before_this_host_holds_it(self) -> None:
        reactor = Reactor()
        pool = make_pool(vip="192.0.2.10", freebind=True, ports=[Port(15060)])
        PoolService(pool, reactor).startService()
        [(_, family, factory)] = reactor.adoptedPorts
        assert family == socket.AF_INET
        assert isinstance(factory, Listener)

    def test_an_idle_timeout_below_what_ocs_needs_is_warned_about(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        PoolService(make_pool(idle_timeout=1799), Reactor()).startService()
        PoolService(make_pool(idle_timeout=1800), Reactor()).startService()
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert [formatEvent(e) for e in warnings] == [
            "pool pool01: idle_timeout = 1799 s is below the 1800 s OCS 2007 R2 "
            "requires; quiet clients will be cut off"
        ]

    def test_the_start_line_counts_ports_and_servers_in_words(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        one = Server("fe1", "127.0.1.11")
        PoolService(make_pool(one, ports=[Port(15060)]), Reactor()).startService()
        PoolService(
            make_pool(ports=[Port(15060), Port(15061)]), Reactor()
        ).startService()
        said = [formatEvent(e) for e in events if "balancing" in e["log_format"]]
        assert [line.split(" with ")[0] for line in said] == [
            "pool pool01 (pool01.example.com) balancing 1 port on 127.0.1.10 "
            "over 1 server",
            "pool pool01 (pool01.example.com) balancing 2 ports on 127.0.1.10 "
            "over 2 servers",
        ]

    def test_idle_sweep_runs_on_the_injected_clock(self) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(idle_timeout=10), reactor)
        service.startService()
        client, _protocol = open_connection(reactor)
        reactor.advance(9.9)
        assert not client.disconnecting
        reactor.advance(0.6)  # past 10 s, at the next 0.5 s sweep
        assert client.disconnecting

    def test_stop_stops_listening_and_closes_connections_at_once(self) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(), reactor)
        service.startService()
        client, protocol = open_connection(reactor)
        d = service.stopService()
        assert all(p.stopped for p in reactor.ports)
        assert client.disconnecting
        self.assertNoResult(d)  # the close has not completed yet
        protocol.connectionLost(None)
        self.successResultOf(d)

    def test_stop_waits_out_the_grace_period_for_open_connections(self) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(), reactor, grace_period=30)
        service.startService()
        client, _protocol = open_connection(reactor)
        d = service.stopService()
        reactor.advance(29)
        assert not client.disconnecting
        reactor.advance(1)
        assert client.disconnecting
        self.assertNoResult(d)

    def test_stop_finishes_early_when_the_last_connection_closes(self) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(), reactor, grace_period=30)
        service.startService()
        _client, protocol = open_connection(reactor)
        d = service.stopService()
        reactor.advance(5)
        protocol.connectionLost(None)
        self.successResultOf(d)

    def test_connections_that_never_close_are_aborted_after_the_close_timeout(
        self,
    ) -> None:
        reactor = Reactor()
        service = PoolService(make_pool(), reactor)
        service.startService()
        client, _protocol = open_connection(reactor)
        service.stopService()
        assert not client.disconnected
        reactor.advance(5)
        assert client.disconnected  # StringTransport.abortConnection


class RuntimeChangeTests(SynchronousTestCase):
    """Servers and whole configurations change while connections stay open."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.service = PoolService(make_pool(ports=[Port(5060)]), self.reactor)
        self.service.startService()
        self.client, _ = open_connection(self.reactor)
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def test_add_remove_reweight_and_state_are_logged(self) -> None:
        service = self.service
        service.add_server(Server("fe3", "127.0.1.13", weight=5))
        service.reweight("fe3", 9)
        service.set_state("fe2", AdminState.DRAIN)
        service.set_state("fe2", AdminState.DRAIN)  # no change, no line
        service.remove_server("fe1")
        assert [s.name for s in service.pool.servers] == ["fe2", "fe3"]
        assert service.pool.servers[1].weight == 9
        assert self.logged() == [
            "server fe3 (127.0.1.13) added; it takes connections once 2 checks "
            "in a row pass",
            "server fe3 weight is now 9",
            "server fe2 is now in state drain: no new connections; open ones continue",
            "server fe1 (127.0.1.11) removed; its 1 open connections may finish",
        ]
        assert not self.client.disconnecting

    def test_removing_with_force_closes_the_servers_connections(self) -> None:
        self.service.remove_server("fe1", force=True)
        assert self.client.disconnecting

    def test_a_server_being_removed_is_only_forced_by_removing_it_again(
        self,
    ) -> None:
        self.service.remove_server("fe1")
        leaving = set(self.service.servers.leaving)
        assert [b.name for b in leaving] == ["fe1"]
        self.service.remove_server("fe1")  # already being removed: nothing more
        assert (self.service.servers.leaving, self.client.disconnecting) == (
            leaving,
            False,
        )
        self.service.remove_server("fe1", force=True)
        assert self.client.disconnecting
        with pytest.raises(UnknownServerError):
            self.service.remove_server("fe9", force=True)

    def test_refused_changes_change_nothing(self) -> None:
        service = self.service
        before = service.pool
        with pytest.raises(ConfigError, match="already server fe1's address"):
            service.add_server(Server("fe3", "127.0.1.11"))
        with pytest.raises(ValueError, match="weight"):
            service.reweight("fe1", -1)
        with pytest.raises(UnknownServerError):
            service.set_state("fe9", AdminState.MAINT)
        service.remove_server("fe2")
        with pytest.raises(LastServerError, match="fe1 is the pool's last server"):
            service.remove_server("fe1")
        assert service.pool == attrs.evolve(before, servers=before.servers[:1])

    def test_reload_binds_new_ports_closes_gone_ones_and_keeps_connections(
        self,
    ) -> None:
        first = self.reactor.ports[0]
        new = make_pool(
            ports=[Port(5061, PortProtocol.SIPS)], scheduler="least-connections"
        )
        d = self.service.reload(new)
        self.successResultOf(d)
        assert first.stopped
        assert [p for p, *_ in self.reactor.tcpServers] == [5060, 5061]
        assert not self.client.disconnecting
        assert self.service.pool == new

    def test_reload_that_cannot_bind_changes_nothing(self) -> None:
        self.reactor.taken = 444
        new = make_pool(ports=[Port(5060), Port(135), Port(444)])
        failure = self.failureResultOf(self.service.reload(new))
        failure.trap(CannotListenError)
        assert [p.stopped for p in self.reactor.ports] == [False, True]
        assert self.service.pool == make_pool(ports=[Port(5060)])

    def test_reload_refuses_a_new_vip(self) -> None:
        new = attrs.evolve(self.service.pool, vip="127.0.1.20")
        failure = self.failureResultOf(self.service.reload(new))
        assert str(failure.value) == (
            "[pool] vip cannot change from 127.0.1.10 to 127.0.1.20 while "
            "running; restart to change it"
        )

    def test_reload_restarts_checks_and_sweep_only_when_their_settings_change(
        self,
    ) -> None:
        health, sweep = self.service.health, self.service.sweeper
        same = attrs.evolve(self.service.pool, retries=0)
        self.successResultOf(self.service.reload(same))
        assert (self.service.health, self.service.sweeper) == (health, sweep)
        changed = attrs.evolve(
            same, idle_timeout=60, monitor=Monitor(interval=1, timeout=1)
        )
        self.successResultOf(self.service.reload(changed))
        assert self.service.health is not health
        assert self.service.health.interval == 1
        assert self.service.sweeper.step == 3
        assert not health.running
        assert self.service.health.running


class AdminInterfaceTests(SynchronousTestCase):
    def test_the_admin_interface_listens_where_configured(self) -> None:
        reactor = Reactor()
        admin = Admin("tcp:9901:interface=127.0.0.1")
        PoolService(make_pool(ports=[Port(5060)], admin=admin), reactor).startService()
        bound = [(port, interface) for port, _, _, interface in reactor.tcpServers]
        assert bound == [(5060, "127.0.1.10"), (9901, "127.0.0.1")]

    def test_an_unreadable_token_stops_the_start_with_nothing_bound(self) -> None:
        reactor = Reactor()
        admin = Admin(token_file="/nonexistent/token")
        service = PoolService(make_pool(ports=[Port(5060)], admin=admin), reactor)
        with pytest.raises(AdminTokenError, match="cannot read"):
            service.privilegedStartService()
        assert [p.stopped for p in reactor.ports] == [True]

    def test_reload_refuses_tls_changes(self) -> None:
        service = PoolService(make_pool(), Reactor())
        service.startService()
        tls = TLSSettings(TLSMode.TERMINATE, certificate=self.pool_pem())
        failure = self.failureResultOf(
            service.reload(attrs.evolve(service.pool, tls=tls))
        )
        assert str(failure.value) == (
            "[tls] cannot change while running; restart to change it"
        )

    def test_reload_refuses_a_port_moving_into_tls_termination(self) -> None:
        tls = TLSSettings(TLSMode.TERMINATE, certificate=self.pool_pem())
        service = PoolService(make_pool(ports=[Port(5061)], tls=tls), Reactor())
        service.startService()
        failure = self.failureResultOf(
            service.reload(make_pool(ports=[Port(5061, PortProtocol.SIPS)], tls=tls))
        )
        assert str(failure.value) == (
            "[ports] 5061 cannot change between a terminated TLS port and another "
            "while running; restart to change it"
        )

    def pool_pem(self) -> str:
        path = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, path)
        pem = trustme.CA().issue_cert("pool01.example.com")
        pem.private_key_and_cert_chain_pem.write_to_path(str(path / "pool.pem"))
        return str(path / "pool.pem")

    def test_terminated_sips_ports_listen_behind_tls(self) -> None:
        tls = TLSSettings(TLSMode.TERMINATE, certificate=self.pool_pem())
        ports = [Port(5060, PortProtocol.SIP), Port(5061, PortProtocol.SIPS)]
        reactor = Reactor()
        PoolService(make_pool(ports=ports, tls=tls), reactor).startService()
        factories = [type(f).__name__ for _, f, *_ in reactor.tcpServers]
        assert factories == ["Listener", "TLSMemoryBIOFactory"]

    def test_an_admin_port_in_use_stops_the_start_with_nothing_bound(self) -> None:
        reactor = Reactor(taken=9900)
        service = PoolService(make_pool(ports=[Port(5060)], admin=Admin()), reactor)
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
        assert [p.stopped for p in reactor.ports] == [True]

    def test_reload_cannot_move_the_admin_interface(self) -> None:
        service = PoolService(make_pool(admin=Admin()), Reactor())
        service.startService()
        moved = attrs.evolve(service.pool, admin=Admin("tcp:9999"))
        failure = self.failureResultOf(service.reload(moved))
        assert "[admin] listen cannot change" in str(failure.value)


class ConfigReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.path = Path(folder) / "pool.ini"
        self.path.write_text(render(make_pool(ports=[Port(5060)])))
        self.reactor = Reactor()
        self.service = PoolService(load(self.path), self.reactor)
        self.reloader = ConfigReloader(str(self.path), self.service, self.reactor)
        self.reloader.setServiceParent(self.service)
        self.hangup = signal.getsignal(signal.SIGHUP)
        self.service.startService()
        self.addCleanup(lambda: self.reloader.running and self.reloader.stopService())
        self.events: list[LogEvent] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def test_a_valid_file_is_applied(self) -> None:
        self.path.write_text(render(make_pool(ports=[Port(5060), Port(135)])))
        self.successResultOf(self.reloader.reload())
        assert [p.number for p in self.service.pool.ports] == [5060, 135]
        assert f"reloaded {self.path}" in self.logged(LogLevel.info)

    def test_a_bad_file_is_logged_and_the_running_configuration_stays(self) -> None:
        before = self.service.pool
        self.path.write_text(render(before).replace("retries = 2", "retries = -1"))
        self.successResultOf(self.reloader.reload())
        assert self.service.pool == before
        assert self.logged(LogLevel.error) == [
            f"reloading {self.path} refused; the running configuration stays:\n"
            f"{self.path}: [pool] retries = -1: must be a whole number, 0 or more"
        ]

    def test_reloads_never_overlap_and_a_storm_costs_one_more(self) -> None:
        loads: list[Pool] = []
        reloads: list[Deferred[None]] = []

        def reload(pool: Pool) -> Deferred[None]:
            loads.append(pool)
            reloads.append(Deferred())
            return reloads[-1]

        self.service.reload = reload  # type: ignore[method-assign]
        first = self.reloader.reload()
        storm = [self.reloader.reload() for _ in range(5)]
        assert len(loads) == 1
        reloads[0].callback(None)
        self.successResultOf(first)
        assert len(loads) == 2  # one more for the whole storm
        self.assertNoResult(storm[0])
        reloads[1].callback(None)
        for d in storm:
            self.successResultOf(d)

    def test_sighup_reloads_and_stopping_restores_the_handler(self) -> None:
        calls: list[object] = []
        self.reactor.callFromThread = lambda f, *a: calls.append(f)  # type: ignore[method-assign]
        os.kill(os.getpid(), signal.SIGHUP)
        assert calls == [self.reloader.reload]
        self.reloader.stopService()
        assert signal.getsignal(signal.SIGHUP) is self.hangup


class TokenReloadTests(SynchronousTestCase):
    def test_a_reload_reads_the_token_again_and_a_bad_one_changes_nothing(
        self,
    ) -> None:
        folder = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, folder)
        (folder / "token").write_text("old\n")
        admin = Admin(token_file=str(folder / "token"))
        service = PoolService(make_pool(ports=[Port(5060)], admin=admin), Reactor())
        service.startService()
        assert service.admin is not None
        api = StubTreq(service.admin.factory.resource)

        def answers(token: str) -> int:
            headers = {"authorization": [f"Bearer {token}"]}
            d = api.get("http://127.0.0.1:9900/api/pool", headers=headers)
            return int(self.successResultOf(d).code)

        assert (answers("old"), answers("new")) == (200, 401)
        (folder / "token").write_text("new\n")
        self.successResultOf(service.reload(service.pool))
        assert (answers("old"), answers("new")) == (401, 200)
        missing = Admin(token_file=str(folder / "missing"))
        bigger = attrs.evolve(
            service.pool, admin=missing, ports=[Port(5060), Port(135)]
        )
        self.failureResultOf(service.reload(bigger)).trap(AdminTokenError)
        assert answers("new") == 200
        assert [p.number for p in service.pool.ports] == [5060]


def test_vip_ports_listen_with_a_backlog_for_a_pool_reconnecting_at_once() -> None:
    reactor = Reactor()
    PoolService(make_pool(ports=[Port(5060)]), reactor).startService()
    [(_, _, backlog, interface)] = reactor.tcpServers
    assert (backlog, interface) == (socket.SOMAXCONN, "127.0.1.10")
