"""Moving users between servers at quiet moments: on drain, and to rebalance.

A SIP client keeps its connection for hours, so draining a server moves no
one until they sign out.  ``drain`` with ``move_within`` closes the server's
connections for them, each at a quiet moment (no transaction open, no call:
:attr:`ocsbal.sip.Registrations.quiet`), spread over the window so that the
clients reconnect (and are placed by the scheduler, and register again) a
few at a time, never all at once.  A busy connection is closed at its first
quiet moment after; one still busy when the window ends stays: a call is
never cut.  :class:`Move` is the arithmetic of one server's move.

A rebalance (``[pool] rebalance``, or ``ocsbal ctl rebalance``) moves
quiet connections the same way off the servers above their weighted share
while one is below it (:func:`rebalance_plan`), at ``rebalance_rate``.

:class:`Mover` ticks a pool's moves and rebalance every :data:`TICK`
seconds and has the quiet connections they say closed, by whichever
processes hold them, each move said in the log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ocsbal._pool import Backend, RunningPool
    from ocsbal.sip import Registrations

__all__ = ["TICK", "Move", "Mover", "close_quiet_here", "rebalance_plan"]

log = Logger(namespace="ocsbal")

#: Seconds between two lines of a move's progress in the log.
SAY_EVERY = 60.0

#: Seconds between two looks at a move.
TICK = 1.0


@attrs.define
class Move:
    """One server's move.

    :ivar started: when it began.
    :ivar window: seconds it may take.
    :ivar moved: connections it has closed so far.
    :ivar said: when its progress was last logged.
    """

    started: float
    window: float
    moved: int = 0
    said: float = attrs.field(
        default=attrs.Factory(lambda self: self.started, takes_self=True)
    )

    @property
    def ends(self) -> float:
        """When the window ends."""
        return self.started + self.window

    def due(self, now: float, remaining: int) -> int:
        """How many of the ``remaining`` connections to close this tick, at most.

        The remaining count over the time left, per tick: an even spread to
        the window's end, never a burst, whatever the clients do.
        """
        if remaining <= 0 or now >= self.ends:
            return 0
        ticks_left = max(1.0, (self.ends - now) / TICK)
        return math.ceil(remaining / ticks_left)


#: Closes up to a number of a server's quiet connections; how many it did.
CloseQuiet = Callable[["Backend", int], Deferred[int]]


class _Followed(Protocol):
    """A connection as a move sees it: whether it is quiet, and how to close it."""

    @property
    def sip(self) -> Registrations | None: ...
    @property
    def closing(self) -> bool: ...
    def close(self, cause: str = "admin") -> None: ...


def close_quiet_here(backend: Backend, most: int) -> int:
    """Close up to ``most`` of ``backend``'s quiet connections in this process.

    :return: how many it closed.
    """
    closed = 0
    for connection in list(cast("set[_Followed]", backend.relayed)):
        if closed >= most:
            break
        sip = connection.sip
        if sip is not None and sip.quiet and not connection.closing:
            connection.close("moved")
            closed += 1
    backend.moved += closed
    return closed


class Mover:
    """The moves of a pool's drained servers, and its rebalance, on a clock.

    :param clock: the clock it ticks on.
    :param servers: the pool at run time, read at each tick.
    :param close_quiet: closes a server's quiet connections.
    :ivar moves: the moves under way, by server name.
    """

    def __init__(
        self,
        clock: IReactorTime,
        servers: Callable[[], RunningPool],
        close_quiet: CloseQuiet,
    ) -> None:
        self.clock = clock
        self._servers = servers
        self._close_quiet = close_quiet
        self.moves: dict[str, Move] = {}
        #: Whether a rebalance was asked for by hand, and is not done.
        self.rebalancing = False
        #: Connections a rebalance may move, accrued at its rate.
        self._credit = 0.0
        self._ticking = LoopingCall(lambda: Deferred.fromCoroutine(self._tick()))
        self._ticking.clock = clock

    def begin(self) -> None:
        """Tick from now on: moves, and rebalances if the pool asks for them."""
        if not self._ticking.running:
            self._ticking.start(TICK, now=False)

    def rebalance(self) -> None:
        """Rebalance now, whatever ``[pool] rebalance`` says, until balanced."""
        self.rebalancing = True
        self.begin()

    def start(self, name: str, window: float) -> None:
        """Move server ``name``'s connections away within ``window`` seconds."""
        backend = self._servers().backend(name)
        self.moves[name] = Move(self.clock.seconds(), window)
        log.info(
            "moving the {count} connections of server {server} to the others "
            "within {window:g} s, each at a quiet moment",
            count=backend.active,
            server=name,
            window=window,
        )
        self.begin()

    def stop(self, name: str) -> None:
        """Stop moving server ``name``'s connections (it is ready again)."""
        self.moves.pop(name, None)

    def report(self, name: str) -> dict[str, Any] | None:
        """Server ``name``'s move, or ``None`` if none is under way.

        Its window, the seconds left of it, and the connections it moved.
        """
        move = self.moves.get(name)
        if move is None:
            return None
        ends_in = round(move.ends - self.clock.seconds(), 3)
        return {"within": move.window, "ends_in": ends_in, "moved": move.moved}

    def shut_down(self) -> None:
        """Stop every move and rebalance: the pool stops."""
        self.moves.clear()
        self.rebalancing = False
        if self._ticking.running:
            self._ticking.stop()

    async def _tick(self) -> None:
        now = self.clock.seconds()
        servers = self._servers()
        for name, move in list(self.moves.items()):
            backend = servers.backends.get(name)
            if backend is None or now >= move.ends or not backend.active:
                self._finish(name, move, backend)
                continue
            due = move.due(now, backend.active)
            if due:
                move.moved += await self._close_quiet(backend, due)
            if now - move.said >= SAY_EVERY:
                move.said = now
                log.info(
                    "moving server {server}: {moved} moved, {left} left, "
                    "{seconds:.0f} s to go",
                    server=name,
                    moved=move.moved,
                    left=backend.active,
                    seconds=move.ends - now,
                )
        if servers.pool.rebalance or self.rebalancing:
            await self._rebalance(servers)

    async def _rebalance(self, servers: RunningPool) -> None:
        pool = servers.pool
        backends = list(servers.backends.values())
        plan = rebalance_plan(backends, pool.rebalance_tolerance)
        if not plan:  # balanced (a pass asked for is done), or waiting
            self.rebalancing = self.rebalancing and plan is None
            self._credit = 0.0
            return
        # What a tick could not move (its connections were busy) is not
        # lent to the next: never more than the rate.  A rate under one a
        # tick accrues up to one whole connection.
        per_tick = pool.rebalance_rate * TICK
        self._credit = min(
            self._credit + per_tick, max(per_tick, 1.0), sum(plan.values())
        )
        for name, excess in sorted(plan.items(), key=lambda item: -item[1]):
            most = min(excess, int(self._credit))
            if most < 1:
                break
            backend = servers.backends[name]
            moved = await self._close_quiet(backend, most)
            self._credit -= moved
            if moved:
                log.info(
                    "rebalancing: moved {moved} of {active} connections off "
                    "server {server}, above its share by {excess}",
                    moved=moved,
                    active=backend.active + moved,
                    server=name,
                    excess=excess,
                )

    def _finish(self, name: str, move: Move, backend: Backend | None) -> None:
        del self.moves[name]
        left = 0 if backend is None else backend.active
        log.info(
            "moved server {server}: {moved} connections moved; {left} still "
            "busy stay (GET /api/connections lists them, quiet false)",
            server=name,
            moved=move.moved,
            left=left,
        )


def rebalance_plan(
    backends: Sequence[Backend], tolerance: float
) -> dict[str, int] | None:
    """How many connections each server above its weighted share should shed.

    Among the servers that take new connections, a server's share is the
    host's connections times its weight over their weights.  Nothing is to
    shed unless one of them is below its share by more than ``tolerance``
    percent; then each server above its share sheds what it has over it,
    and never one below.

    :return: the connections to shed by server name (none: balanced
        enough), or ``None`` while a rebalance must wait: a server that
        takes new connections is down, or in slow start.
    """
    taking = [b for b in backends if b.accepting]
    if any(not b.health.up or b.ramping for b in taking):
        return None
    total = sum(b.active for b in taking)
    weights = sum(b.server.weight for b in taking)
    if not total or not weights:
        return {}
    share = {b.name: total * b.server.weight / weights for b in taking}
    if not any(
        share[b.name] - b.active > share[b.name] * tolerance / 100 for b in taking
    ):
        return {}
    return {
        b.name: math.floor(b.active - share[b.name])
        for b in taking
        if b.active - share[b.name] >= 1
    }
