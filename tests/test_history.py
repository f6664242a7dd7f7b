"""The history of the servers' connections, sampled on a clock; /api/history."""

from __future__ import annotations

import json
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

import ocsbal
from ocsbal import PoolService, Port, Server
from ocsbal._history import History
from ocsbal._pool import RunningPool
from ocsbal.config import Admin
from pools import make_pool

FE1, FE2 = Server("fe1", "127.0.1.11"), Server("fe2", "127.0.1.12")


def test_a_sample_is_each_servers_host_wide_connections_at_the_time() -> None:
    clock = Clock()
    servers = RunningPool(make_pool(FE1, FE2), clock.seconds)
    history = History(clock, interval=30, samples=120)
    servers.pick()
    # As a control process holds them: none here, the workers' elsewhere.
    servers.count_elsewhere({"fe1": 4, "fe2": 2}, {})
    clock.advance(30)
    history.sample(servers)
    assert history.report() == {
        "now": 30,
        "interval": 30,
        "window": 3600,
        "times": [30],
        "servers": {"fe1": [5], "fe2": [2]},
    }


def test_only_the_last_samples_are_kept_and_absent_servers_are_none() -> None:
    clock = Clock()
    servers = RunningPool(make_pool(FE1, FE2), clock.seconds)
    history = History(clock, interval=30, samples=3)
    for n in range(5):
        if n == 3:  # fe3 joins, fe2 leaves with no connection
            servers.reconfigure(
                attrs.evolve(servers.pool, servers=[FE1, Server("fe3", "127.0.1.13")])
            )
        servers.backend("fe1").elsewhere = n
        history.sample(servers)
        clock.advance(30)
    report = history.report()
    assert report["times"] == [60, 90, 120]
    assert report["servers"] == {
        "fe1": [2, 3, 4],
        "fe2": [0, None, None],
        "fe3": [None, 0, 0],
    }


def test_a_removed_server_still_holding_connections_is_counted_under_its_name() -> None:
    clock = Clock()
    servers = RunningPool(make_pool(FE1, FE2), clock.seconds)
    fe2 = servers.backend("fe2")
    fe2.elsewhere = 3
    servers.reconfigure(attrs.evolve(servers.pool, servers=[FE1]))
    history = History(clock)
    history.sample(servers)
    assert history.report()["servers"] == {"fe1": [0], "fe2": [3]}


def test_about_says_the_version_and_for_how_long_it_has_run() -> None:
    clock = Clock()
    clock.advance(1000)
    history = History(clock)
    clock.advance(61.5)
    assert history.about() == {
        "version": ocsbal.__version__,
        "started": 1000,
        "uptime": 61.5,
    }


class SampledTests(SynchronousTestCase):
    """A pool with ``[admin]`` samples while it runs, on its reactor."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(5000)
        pool = make_pool(FE1, FE2, ports=(Port(5060, "sip"),), admin=Admin())
        self.service = PoolService(pool, self.reactor)
        self.service.startService()
        assert self.service.admin is not None
        self.treq = StubTreq(self.service.admin.factory.resource)

    def get(self, path: str) -> Any:
        url = "http://127.0.0.1:9900" + path
        response = self.successResultOf(self.treq.get(url))
        assert response.code == 200
        return json.loads(self.successResultOf(response.content()))

    def connect(self) -> None:
        factory = self.reactor.tcpServers[0][1]
        client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        factory.buildProtocol(None).makeConnection(client)
        self.reactor.tcpClients[-1][2].buildProtocol(None).makeConnection(
            StringTransport()
        )

    def test_a_sample_at_the_start_then_one_every_30_seconds(self) -> None:
        self.connect()
        self.reactor.advance(29)
        assert self.get("/api/history")["times"] == [5000]  # the start's
        self.reactor.advance(1)
        past = self.get("/api/history")
        assert past["times"] == [5000, 5030]
        assert past["servers"] == {"fe1": [0, 1], "fe2": [0, 0]}

    def test_the_pool_says_how_long_the_daemon_has_run(self) -> None:
        self.reactor.advance(90)
        assert self.get("/api/pool")["daemon"] == {
            "version": ocsbal.__version__,
            "started": 5000,
            "uptime": 90,
        }

    def test_sampling_stops_with_the_service(self) -> None:
        self.successResultOf(self.service.stopService())
        self.reactor.advance(300)
        assert self.get("/api/history")["times"] == [5000]
        assert not self.reactor.getDelayedCalls()
