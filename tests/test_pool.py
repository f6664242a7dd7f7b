"""The pool at run time: slow start and connection limits (ocsbal._pool)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from ocsbal._model import Monitor, Pool, Port, PortProtocol, Server
from ocsbal._pool import AdminState, AtLimitError, RunningPool
from ocsbal.scheduling import NoServerAvailable


def make(*servers: Server, **pool: Any) -> tuple[RunningPool, Clock]:
    clock = Clock()
    config = Pool(
        name="p",
        fqdn="p.example.com",
        vip="127.0.1.10",
        servers=servers or [Server("fe1", "127.0.1.11"), Server("fe2", "127.0.1.12")],
        ports=[Port(5060, PortProtocol.SIP)],
        monitor=Monitor(rise=2, fall=1),
        **pool,
    )
    return RunningPool(config, clock.seconds), clock


def bring_back(running: RunningPool, name: str) -> None:
    """Take ``name`` down with a failed check, and up again with two good ones."""
    backend = running.backend(name)
    running.record(backend, False, "refused")
    assert not backend.health.up
    running.record(backend, True)
    running.record(backend, True)
    assert backend.health.up


class TestSlowStart:
    def test_a_server_that_comes_back_ramps_up_to_its_weight(self) -> None:
        running, clock = make(slowstart=100)
        fe1 = running.backend("fe1")
        bring_back(running, "fe1")
        weights = []
        for _ in range(6):
            weights.append(fe1.weight)
            clock.advance(25)
        # From 1 (never 0: it must take some), by the time since it came up.
        assert weights == [1, 25, 50, 75, 100, 100]
        assert fe1.ramp is None  # over: the hot path reads the weight alone

    def test_the_pool_as_it_starts_takes_full_weights(self) -> None:
        """HAProxy's rule: a slow start after a start would slow every server."""
        running, _ = make(slowstart=100)
        assert [b.weight for b in running.backends.values()] == [100, 100]

    def test_a_server_added_or_back_from_maint_ramps_up(self) -> None:
        running, clock = make(slowstart=60)
        running.set_state("fe2", AdminState.MAINT)
        running.set_state("fe2", AdminState.READY)
        added = Server("fe3", "127.0.1.13", weight=60)
        running.reconfigure(
            attrs.evolve(running.pool, servers=[*running.pool.servers, added])
        )
        for name in ("fe2", "fe3"):
            backend = running.backend(name)
            running.record(backend, True)
            running.record(backend, True)
        clock.advance(30)
        assert running.backend("fe2").weight == 50
        assert running.backend("fe3").weight == 30

    def test_a_servers_own_slowstart_wins_and_0_turns_it_off(self) -> None:
        running, clock = make(
            Server("fe1", "127.0.1.11", slowstart=0),
            Server("fe2", "127.0.1.12", slowstart=10),
            slowstart=100,
        )
        bring_back(running, "fe1")
        bring_back(running, "fe2")
        clock.advance(5)
        assert (running.backend("fe1").weight, running.backend("fe2").weight) == (
            100,
            50,
        )

    def test_weighted_least_connections_spares_a_server_in_slow_start(self) -> None:
        """New connections go mostly to the others while a server ramps up."""
        running, clock = make(slowstart=100)
        bring_back(running, "fe1")
        clock.advance(20)  # fe1 at a fifth of its weight
        picks = [running.pick().name for _ in range(60)]
        assert picks.count("fe1") == 10  # 1 : 5 of the 60, where even gives 30

    def test_a_server_up_as_the_control_process_says_ramps_up(self) -> None:
        """Workers take health from their control process, and ramp the same."""
        running, clock = make(slowstart=10)
        fe1 = running.backend("fe1")
        running.set_up(fe1, False)
        running.set_up(fe1, True)
        clock.advance(5)
        assert fe1.weight == 50
        running.set_up(fe1, True)  # no change: the ramp goes on
        assert fe1.weight == 50

    def test_a_reweight_in_slow_start_ramps_to_the_new_weight(self) -> None:
        running, clock = make(slowstart=10)
        bring_back(running, "fe1")
        fe1 = running.backend("fe1")
        fe1.server = Server("fe1", "127.0.1.11", weight=10)
        clock.advance(5)
        assert fe1.weight == 5

    def test_weight_0_stays_0(self) -> None:
        running, _ = make(Server("fe1", "127.0.1.11", weight=0), slowstart=10)
        bring_back(running, "fe1")
        assert running.backend("fe1").weight == 0


class TestMaxconn:
    def test_a_server_at_its_maxconn_is_not_picked(self) -> None:
        running, _ = make(
            Server("fe1", "127.0.1.11", maxconn=2), Server("fe2", "127.0.1.12")
        )
        picks = [running.pick().name for _ in range(6)]
        assert picks.count("fe1") == 2
        running.release(running.backend("fe1"))
        assert running.pick().name == "fe1"

    def test_connections_held_elsewhere_count_against_it(self) -> None:
        running, _ = make(
            Server("fe1", "127.0.1.11", maxconn=3), Server("fe2", "127.0.1.12")
        )
        running.count_elsewhere({"fe1": 3}, {})
        assert {running.pick().name for _ in range(4)} == {"fe2"}

    def test_every_server_full_refuses_at_the_limit(self) -> None:
        running, _ = make(
            Server("fe1", "127.0.1.11", maxconn=1),
            Server("fe2", "127.0.1.12", maxconn=1),
        )
        running.pick()
        running.pick()
        with pytest.raises(AtLimitError) as refused:
            running.pick()
        assert str(refused.value) == (
            "every server that could take it has its maxconn: fe1 (1), fe2 (1)"
        )

    def test_a_full_server_that_is_down_is_not_the_reason(self) -> None:
        running, _ = make(Server("fe1", "127.0.1.11", maxconn=1))
        running.pick()
        running.record(running.backend("fe1"), False, "refused")
        with pytest.raises(NoServerAvailable) as refused:
            running.pick()
        assert not isinstance(refused.value, AtLimitError)

    def test_the_pools_maxconn_counts_every_server_and_those_leaving(self) -> None:
        running, _ = make(maxconn=3)
        first = running.pick()
        running.pick()
        others = [s for s in running.pool.servers if s.name != first.name]
        running.reconfigure(attrs.evolve(running.pool, servers=others))
        running.pick()
        with pytest.raises(AtLimitError, match="the pool has its maxconn of 3"):
            running.pick()
        running.release(first)  # the removed server's connection closes
        running.pick()
