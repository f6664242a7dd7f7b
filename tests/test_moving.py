"""Moving a drained server's users at quiet moments (ocsbal._moving)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from ocsbal._moving import TICK, Move, Mover, close_quiet_here, rebalance_plan
from ocsbal._pool import AdminState, Backend, RunningPool
from ocsbal.sip import Registrations
from pools import make_pool
from test_relay import REGISTER, REGISTERED, Harness


def test_a_move_spreads_what_remains_over_what_is_left_of_its_window() -> None:
    move = Move(started=0.0, window=10.0)
    assert move.due(0.0, 100) == 10
    assert move.due(5.0, 50) == 10
    assert move.due(9.5, 7) == 7  # the last tick takes what is left
    assert move.due(10.0, 7) == 0  # the window is over: busy ones stay
    assert move.due(3.0, 0) == 0


class Pool:
    """A pool of one server holding ``n`` connections, closed as asked."""

    def __init__(self, n: int, quiet: int) -> None:
        self.clock = Clock()
        self.servers = RunningPool(make_pool(), self.clock.seconds)
        self.backend = self.servers.backend("fe1")
        self.backend.here = n
        self.quiet = quiet
        self.closed: list[tuple[float, int]] = []

    def close_quiet(self, backend: Backend, most: int) -> Deferred[int]:
        closing = min(most, self.quiet)
        self.quiet -= closing
        backend.here -= closing
        self.closed.append((self.clock.seconds(), closing))
        return succeed(closing)


def test_the_mover_never_closes_more_a_tick_than_an_even_spread() -> None:
    pool = Pool(60, quiet=50)
    mover = Mover(pool.clock, lambda: pool.servers, pool.close_quiet)
    mover.start("fe1", 30.0)
    for _ in range(40):
        pool.clock.advance(TICK)
    per_tick = [n for _, n in pool.closed]
    assert sum(per_tick) == 50  # every quiet one moved
    assert max(per_tick) <= math.ceil(60 / 29)  # never a burst
    assert pool.backend.here == 10  # the busy ones stay
    assert mover.moves == {}  # over at the window's end
    assert all(at <= 30.0 for at, _ in pool.closed)


def test_busy_ones_go_at_their_first_quiet_moment_within_the_window() -> None:
    pool = Pool(4, quiet=0)
    mover = Mover(pool.clock, lambda: pool.servers, pool.close_quiet)
    mover.start("fe1", 10.0)
    pool.clock.advance(3 * TICK)
    assert pool.backend.here == 4
    pool.quiet = 2  # two calls end: they go, at the even spread's pace
    pool.clock.advance(TICK)
    assert pool.backend.here == 3  # 4 left over 6 s: one a second
    pool.clock.advance(TICK)
    assert pool.backend.here == 2
    assert mover.report("fe1") == {"within": 10.0, "ends_in": 5.0, "moved": 2}


def test_making_the_server_ready_stops_the_move() -> None:
    pool = Pool(10, quiet=10)
    mover = Mover(pool.clock, lambda: pool.servers, pool.close_quiet)
    mover.start("fe1", 100.0)
    pool.clock.advance(TICK)
    mover.stop("fe1")
    pool.clock.advance(10 * TICK)
    assert len(pool.closed) == 1
    assert mover.report("fe1") is None


def registered(h: Harness, port: int) -> Any:
    client, _ = h.accept(port)
    server, _ = h.succeed()
    client.dataReceived(REGISTER)
    server.dataReceived(REGISTERED)
    return client


def test_only_quiet_connections_are_closed_and_each_is_counted() -> None:
    h = Harness(servers=1)
    for port in range(40000, 40003):
        registered(h, port)
    busy = registered(h, 40003)
    busy.dataReceived(
        b"INVITE sip:bob@contoso.com SIP/2.0\r\nCall-ID: call\r\n"
        b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    backend = h.servers.backend("fe0")
    assert close_quiet_here(backend, 10) == 3
    closing = {s for s in h.relay.splices if s.closing}
    assert len(closing) == 3
    assert all(s.cause == "moved" for s in closing)
    assert not any(cast_sip(s).quiet for s in h.relay.splices - closing)
    assert backend.moved == 3
    assert close_quiet_here(backend, 10) == 0  # those closing are not again


def cast_sip(splice: Any) -> Registrations:
    sip: Registrations = splice.sip
    return sip


def test_drain_with_move_within_starts_a_move_and_ready_ends_it() -> None:
    from ocsbal import PoolService

    clock = Clock()
    service = PoolService(make_pool(), clock)  # type: ignore[arg-type]
    service.set_state("fe1", AdminState.DRAIN, move_within=600)
    assert service.mover.report("fe1") == {
        "within": 600,
        "ends_in": 600.0,
        "moved": 0,
    }
    service.set_state("fe1", AdminState.READY)
    assert service.mover.report("fe1") is None


def two(active: tuple[int, int], **pool: Any) -> tuple[RunningPool, Clock]:
    clock = Clock()
    servers = RunningPool(make_pool(**pool), clock.seconds)
    for backend, n in zip(servers.backends.values(), active, strict=True):
        backend.here = n
    return servers, clock


def test_a_server_below_its_share_makes_those_above_shed_their_excess() -> None:
    servers, _ = two((40, 0))
    assert rebalance_plan(list(servers.backends.values()), 10) == {"fe1": 20}
    servers, _ = two((21, 19))  # 19 is 5 % below its share of 20: within 10 %
    assert rebalance_plan(list(servers.backends.values()), 10) == {}


def test_a_rebalance_waits_while_a_server_is_down_or_ramping() -> None:
    servers, clock = two((40, 0), slowstart=60)
    fe2 = servers.backend("fe2")
    servers.record(fe2, False, "refused")
    servers.record(fe2, False, "refused")
    assert rebalance_plan(list(servers.backends.values()), 10) is None
    servers.record(fe2, True)
    servers.record(fe2, True)  # up, in slow start
    assert rebalance_plan(list(servers.backends.values()), 10) is None
    clock.advance(60)  # over; nothing has read its weight meanwhile
    assert rebalance_plan(list(servers.backends.values()), 10) == {"fe1": 20}


def reconnecting(
    servers: RunningPool, closed: list[int]
) -> Callable[[Backend, int], Deferred[int]]:
    """Closes what it is asked to; each client reconnects to fe2, below its share."""

    def close_quiet(backend: Backend, most: int) -> Deferred[int]:
        backend.here -= most
        servers.backend("fe2").here += most
        closed.append(most)
        return succeed(most)

    return close_quiet


def test_a_rebalance_moves_at_its_rate_until_within_the_tolerance() -> None:
    servers, clock = two((40, 0), rebalance=True, rebalance_rate=2)
    fe2 = servers.backend("fe2")
    closed: list[int] = []
    mover = Mover(clock, lambda: servers, reconnecting(servers, closed))
    mover.begin()
    for _ in range(20):
        clock.advance(TICK)
    assert set(closed) == {2}  # the rate, never more
    fe1 = servers.backend("fe1")
    assert (fe1.here, fe2.here) == (22, 18)  # 18 is within 10 % of 20: done
    assert sum(closed) == 18


def test_a_rebalance_held_back_by_busy_connections_never_catches_up() -> None:
    """Ticks that find fewer quiet connections than the rate lend nothing to
    the ticks after: no tick moves more than the rate."""
    servers, clock = two((40, 0), rebalance=True, rebalance_rate=3)
    closed: list[int] = []
    moving = reconnecting(servers, closed)
    quiet = iter([0, 0, 1] + [100] * 20)

    def close_quiet(backend: Backend, most: int) -> Deferred[int]:
        return moving(backend, min(most, next(quiet)))

    mover = Mover(clock, lambda: servers, close_quiet)
    mover.begin()
    for _ in range(12):
        clock.advance(TICK)
    assert closed[:4] == [0, 0, 1, 3]
    assert max(closed) == 3


def test_a_rebalance_slower_than_one_a_tick_waits_for_a_whole_one() -> None:
    servers, clock = two((40, 0), rebalance=True, rebalance_rate=0.5)
    closed: list[int] = []
    mover = Mover(clock, lambda: servers, reconnecting(servers, closed))
    mover.begin()
    for _ in range(8):
        clock.advance(TICK)
    assert closed == [1, 1, 1, 1]  # one every other tick


def test_a_pass_by_hand_rebalances_once_without_rebalance_set() -> None:
    servers, clock = two((30, 10))
    moved: list[int] = []
    mover = Mover(clock, lambda: servers, reconnecting(servers, moved))
    mover.begin()
    for _ in range(5):
        clock.advance(TICK)
    assert moved == []  # rebalance = no
    mover.rebalance()
    for _ in range(20):
        clock.advance(TICK)
    assert sum(moved) == 8  # 18 of a share of 20 is within 10 %
    assert mover.rebalancing is False  # done once balanced
