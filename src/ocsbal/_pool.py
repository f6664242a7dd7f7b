"""The pool at run time: its servers, what the operator allows, their load.

:class:`RunningPool` holds the configuration in force, a :class:`Backend`
for each server (its health, admin state and counts), the servers being
removed that still have connections, and the one scheduler that picks among
them.  It knows nothing of sockets: the relay asks it for a server, tells it
when a connection ends, and reports failed connections as failed checks.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Protocol, cast

import attrs

from ocsbal.health import HealthState, judge
from ocsbal.scheduling import NoServerAvailable, scheduler_class

if TYPE_CHECKING:
    from ocsbal._model import Pool, Server
    from ocsbal.scheduling import IScheduler

__all__ = [
    "AdminState",
    "AtLimitError",
    "Backend",
    "LastServerError",
    "Relayed",
    "RunningPool",
    "UnknownServerError",
]


class AdminState(enum.Enum):
    """What the operator allows of a server, whatever its health."""

    #: Takes new connections while it is up.
    READY = "ready"
    #: Takes no new connection; those open continue.  Still health-checked.
    DRAIN = "drain"
    #: Takes no new connection and is not health-checked; those open
    #: continue.  Back in ``ready``, it must pass ``rise`` checks again.
    MAINT = "maint"


class Relayed(Protocol):
    """A connection relayed to a server, as the server's account sees it."""

    @property
    def upstream(self) -> int:
        """Bytes relayed to the server."""

    @property
    def downstream(self) -> int:
        """Bytes relayed from the server."""

    def close(self) -> None:
        """Close the connection, after what is already buffered."""


@attrs.define
class Ramp:
    """A server's slow start: its weight climbing from next to nothing to full.

    :ivar now: the clock.
    :ivar start: when the server came up.
    :ivar seconds: how long the climb takes.
    """

    now: Callable[[], float]
    start: float
    seconds: float

    def part(self) -> float:
        """How far it has climbed: from 0 when it came up to 1 (and past)."""
        return (self.now() - self.start) / self.seconds


@attrs.define(eq=False)
class Backend:
    """A server of the pool at run time: its configuration, state and load.

    It satisfies :class:`ocsbal.scheduling.Candidate`, so schedulers rank it
    directly.

    :ivar server: the configured server; replaced when it is re-weighted.
    :ivar health: whether it is up, from its health checks and from failed
        connections.
    :ivar state: what the operator allows.
    :ivar here: connections to this server that this process has open or
        is opening.
    :ivar elsewhere: those the other processes of the host have, as they
        last reported (0 with one process), so that every process ranks the
        servers by the host's counts.
    :ivar relayed: the connections relayed to it now.
    :ivar total: connections relayed to it since it joined.
    :ivar removed: whether it has been removed from the pool; it is gone
        once its last connection closes.
    :ivar ramp: its slow start, while it is in one.
    """

    server: Server
    health: HealthState = attrs.Factory(HealthState)
    state: AdminState = AdminState.READY
    here: int = 0
    elsewhere: int = 0
    relayed: set[Relayed] = attrs.Factory(set)
    total: int = 0
    removed: bool = False
    ramp: Ramp | None = None
    #: Connection attempts to it that failed, by kind (``refused``...).
    connect_failures: Counter[str] = attrs.Factory(Counter)
    #: Its connections closed at quiet moments to move their clients away.
    moved: int = 0
    #: Bytes of the connections already closed, from and to the server.
    _closed_received: int = 0
    _closed_sent: int = 0

    @property
    def name(self) -> str:
        """The server's name, from its ``[server:NAME]`` section."""
        return self.server.name

    @property
    def active(self) -> int:
        """Connections to this server open or being opened, host-wide."""
        return self.here + self.elsewhere

    @property
    def weight(self) -> int:
        """The weight it is ranked by: its configured weight, less in slow start.

        In slow start it rises in whole steps from 1 with the time since the
        server came up, reaching the configured weight at the ramp's end.
        """
        weight = self.server.weight
        part = self._climbed()
        if part is None:
            return weight
        return max(1, math.ceil(weight * part)) if weight else 0

    @property
    def ramping(self) -> bool:
        """Whether it is in slow start now."""
        return self._climbed() is not None

    def _climbed(self) -> float | None:
        """How far its slow start has climbed, below 1; ``None`` if none is on.

        A ramp found over is dropped, so the hot path reads the weight alone.
        """
        ramp = self.ramp
        if ramp is None:
            return None
        part = ramp.part()
        if part >= 1.0:
            self.ramp = None
            return None
        return part

    @property
    def full(self) -> bool:
        """Whether it has as many connections as its ``maxconn`` allows."""
        limit = self.server.maxconn
        return limit > 0 and self.here + self.elsewhere >= limit

    @property
    def accepting(self) -> bool:
        """Whether the operator lets new connections go to this server."""
        return self.state is AdminState.READY and not self.removed

    @property
    def pickable(self) -> bool:
        """Whether a new connection may go to this server now."""
        return self.health.up and self.accepting and not self.full

    @property
    def monitored(self) -> bool:
        """Whether health checks should run on this server."""
        return self.state is not AdminState.MAINT and not self.removed

    @property
    def received(self) -> int:
        """Bytes read from this server, over all its connections."""
        return self._closed_received + sum(c.downstream for c in self.relayed)

    @property
    def sent(self) -> int:
        """Bytes written to this server, over all its connections."""
        return self._closed_sent + sum(c.upstream for c in self.relayed)

    def attached(self, connection: Relayed) -> None:
        """Count a connection relayed to this server."""
        self.total += 1
        self.relayed.add(connection)

    def detached(self, connection: Relayed) -> None:
        """Count the end of a connection relayed to this server."""
        self.relayed.discard(connection)
        self._closed_received += connection.downstream
        self._closed_sent += connection.upstream


class UnknownServerError(KeyError):
    """No server of that name is in the pool."""

    def __str__(self) -> str:
        return f"no server named {self.args[0]} in the pool"


class LastServerError(ValueError):
    """A pool's last server cannot be removed: a pool needs one."""


# The name follows NoServerAvailable's, which it is.
class AtLimitError(NoServerAvailable):
    """No server is picked because of a ``maxconn``: the pool's, or every server's."""


class RunningPool:
    """The servers of a pool at run time, and the scheduler that picks them.

    A new configuration (a :class:`~ocsbal.config.Pool`, which has already
    checked itself) is applied with :meth:`reconfigure`, and servers are
    drained or put in maintenance with :meth:`set_state`, while connections
    run.

    :param pool: the pool's configuration.
    :param now: the clock, which times slow starts and tells when each
        server went up or down (:attr:`HealthState.since
        <ocsbal.health.HealthState.since>`).
    :param health_changed: called with a server whose health :meth:`record`
        changed (a control process tells its workers).

    :ivar pool: the configuration in force, servers and weights included.
    :ivar backends: the pool's servers by name, in configuration order.
    :ivar leaving: removed servers that still have connections open.
    :ivar scheduler: picks the server for each new connection, as
        ``[pool] scheduler`` names it.
    """

    def __init__(
        self,
        pool: Pool,
        now: Callable[[], float],
        health_changed: Callable[[Backend], None] | None = None,
    ) -> None:
        self.pool = pool
        self.now = now
        self._health_changed = health_changed
        started = now()
        self.backends = {
            s.name: Backend(s, HealthState(since=started)) for s in pool.servers
        }
        self.leaving: set[Backend] = set()
        self.scheduler: IScheduler = scheduler_class(pool.scheduler)()

    def backend(self, name: str) -> Backend:
        """The server called ``name``.

        :raises UnknownServerError: if there is none.
        """
        try:
            return self.backends[name]
        except KeyError:
            raise UnknownServerError(name) from None

    def find(self, name: str) -> Backend:
        """The server called ``name``: the pool's, else one being removed.

        :raises UnknownServerError: if there is neither.
        """
        removing = self.removing(name)
        if name in self.backends or not removing:
            return self.backend(name)
        return removing[0]

    def removing(self, name: str) -> list[Backend]:
        """The servers called ``name`` being removed, still finishing connections.

        Usually none or one; more if a reload gave the name to another
        server, then removed that one too, before the first had finished.
        """
        return [b for b in self.leaving if b.name == name]

    def removing_only(self, name: str) -> int:
        """The connections of the servers ``name`` being removed, which hold the name.

        0 if a server of the pool is called ``name`` too: the name is its own.
        """
        if name in self.backends:
            return 0
        return sum(b.active for b in self.removing(name))

    def close_removing(self, name: str) -> None:
        """Close this process's connections to the servers ``name`` being removed."""
        for backend in self.removing(name):
            for connection in list(backend.relayed):
                connection.close()

    def reconfigure(self, pool: Pool) -> tuple[list[Backend], list[Backend]]:
        """Make ``pool`` the configuration in force, keeping every connection.

        A server whose name is gone, or whose address changed, is removed:
        it takes no new connection and is gone once its last one closes.  A
        new server (or new address) joins down, and is picked once its
        health checks pass.  The others keep their state and health and take
        their new weight from the next connection on.

        :return: the servers added and the servers removed.
        """
        old, self.pool = self.pool, pool
        wanted = {s.name: s for s in pool.servers}
        removed = [
            b
            for name, b in self.backends.items()
            if name not in wanted or wanted[name].address != b.server.address
        ]
        for backend in removed:
            backend.removed = True
            self.leaving.add(backend)
            self._forget_if_done(backend)
        added: list[Backend] = []
        backends: dict[str, Backend] = {}
        for server in pool.servers:
            kept = self.backends.get(server.name)
            if kept is None or kept.removed:
                joined = HealthState(up=False, since=self.now())
                backends[server.name] = Backend(server, joined)
                added.append(backends[server.name])
            else:
                kept.server = server
                backends[server.name] = kept
        self.backends = backends
        if pool.scheduler != old.scheduler:
            self.scheduler = scheduler_class(pool.scheduler)()
        return added, removed

    def set_state(self, name: str, state: AdminState) -> None:
        """Put server ``name`` in ``state``; see :class:`AdminState`."""
        backend = self.backend(name)
        if state is AdminState.MAINT:
            if backend.health.up:
                backend.health.since = self.now()
            backend.health.suspend("in maintenance")
        backend.state = state

    def pick(self, tried: Collection[Backend] = ()) -> Backend:
        """The server for a new connection, counted active from now on.

        :param tried: servers this connection tried already.
        :raises ocsbal.scheduling.NoServerAvailable: if none can take it.
        """
        limit = self.pool.maxconn
        if limit and self.connections() >= limit:
            raise AtLimitError(f"the pool has its maxconn of {limit} connections")
        candidates = [
            b for b in self.backends.values() if b.pickable and b not in tried
        ]
        try:
            backend = cast(Backend, self.scheduler.pick(candidates))
        except NoServerAvailable:
            full = [
                f"{b.name} ({b.server.maxconn})"
                for b in self.backends.values()
                if b.full and b.health.up and b.accepting and b not in tried
            ]
            if full:
                raise AtLimitError(
                    "every server that could take it has its maxconn: "
                    + ", ".join(full)
                ) from None
            raise
        backend.here += 1
        return backend

    def connections(self) -> int:
        """Connections open or being opened to the pool's servers, host-wide.

        Those to servers removed but still finishing count too.
        """
        return sum(b.active for b in self.backends.values()) + sum(
            b.active for b in self.leaving
        )

    def set_up(self, backend: Backend, up: bool) -> None:
        """Take ``backend`` up or down, as the control process found it."""
        was, backend.health.up = backend.health.up, up
        if up and not was:
            self._came_up(backend)

    def _came_up(self, backend: Backend) -> None:
        seconds = backend.server.slowstart
        if seconds is None:
            seconds = self.pool.slowstart
        backend.ramp = Ramp(self.now, self.now(), seconds) if seconds > 0 else None

    def count_elsewhere(
        self, servers: Mapping[str, int], leaving: Mapping[str, int]
    ) -> None:
        """Take the other processes' connections, per server name.

        ``servers`` counts those to the servers of the pool, ``leaving``
        those to servers removed; a name not given has none.  A process that
        has not yet applied a removal still counts the server's connections
        in ``servers``: they count for the server being removed, unless its
        name is in the pool again.
        """
        for backend in self.backends.values():
            backend.elsewhere = servers.get(backend.name, 0)
        for backend in list(self.leaving):
            behind = (
                0 if backend.name in self.backends else servers.get(backend.name, 0)
            )
            backend.elsewhere = leaving.get(backend.name, 0) + behind
            self._forget_if_done(backend)

    def release(self, backend: Backend) -> None:
        """Count a connection to ``backend`` closed or never made."""
        backend.here -= 1
        self._forget_if_done(backend)

    def record(self, backend: Backend, ok: bool, reason: str = "ok") -> None:
        """Count a health check's result, or a failed connection, for ``backend``.

        A change of state is logged once, with its reason, and its time kept;
        a server that comes up starts its slow start.
        """
        was = backend.health.up
        judge(backend.health, backend.server, self.pool.monitor, ok, reason)
        if backend.health.up != was:
            backend.health.since = self.now()
            if backend.health.up:
                self._came_up(backend)
            if self._health_changed is not None:
                self._health_changed(backend)

    def _forget_if_done(self, backend: Backend) -> None:
        if backend.removed and not backend.active:
            self.leaving.discard(backend)
