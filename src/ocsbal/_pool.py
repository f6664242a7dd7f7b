"""The pool at run time: its servers, what the operator allows, their load.

:class:`RunningPool` holds the configuration in force, a :class:`Backend`
for each server (its health, admin state and counts), the servers being
removed that still have connections, and the one scheduler that picks among
them.  It knows nothing of sockets: the relay asks it for a server, tells it
when a connection ends, and reports failed connections as failed checks.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Protocol, cast

import attrs

from ocsbal.health import HealthState, judge
from ocsbal.scheduling import scheduler_class

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ocsbal._model import Pool, Server
    from ocsbal.scheduling import IScheduler

__all__ = [
    "AdminState",
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
    """

    server: Server
    health: HealthState = attrs.Factory(HealthState)
    state: AdminState = AdminState.READY
    here: int = 0
    elsewhere: int = 0
    relayed: set[Relayed] = attrs.Factory(set)
    total: int = 0
    removed: bool = False
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
        """The server's configured weight."""
        return self.server.weight

    @property
    def accepting(self) -> bool:
        """Whether the operator lets new connections go to this server."""
        return self.state is AdminState.READY and not self.removed

    @property
    def pickable(self) -> bool:
        """Whether a new connection may go to this server now."""
        return self.health.up and self.accepting

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


class RunningPool:
    """The servers of a pool at run time, and the scheduler that picks them.

    A new configuration (a :class:`~ocsbal.config.Pool`, which has already
    checked itself) is applied with :meth:`reconfigure`, and servers are
    drained or put in maintenance with :meth:`set_state`, while connections
    run.

    :param pool: the pool's configuration.
    :param clock: tells when each server went up or down
        (:attr:`HealthState.since <ocsbal.health.HealthState.since>`); the
        global reactor by default.

    :ivar pool: the configuration in force, servers and weights included.
    :ivar backends: the pool's servers by name, in configuration order.
    :ivar leaving: removed servers that still have connections open.
    :ivar scheduler: picks the server for each new connection, as
        ``[pool] scheduler`` names it.
    """

    def __init__(self, pool: Pool, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast("IReactorTime", reactor)
        self.clock = clock
        self.pool = pool
        now = clock.seconds()
        self.backends = {
            s.name: Backend(s, HealthState(since=now)) for s in pool.servers
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
                joined = HealthState(up=False, since=self.clock.seconds())
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
                backend.health.since = self.clock.seconds()
            backend.health.suspend("in maintenance")
        backend.state = state

    def pick(self, tried: Collection[Backend] = ()) -> Backend:
        """The server for a new connection, counted active from now on.

        :param tried: servers this connection tried already.
        :raises ocsbal.scheduling.NoServerAvailable: if none can take it.
        """
        candidates = [
            b for b in self.backends.values() if b.pickable and b not in tried
        ]
        backend = cast(Backend, self.scheduler.pick(candidates))
        backend.here += 1
        return backend

    def count_elsewhere(
        self, servers: Mapping[str, int], leaving: Mapping[str, int]
    ) -> None:
        """Take the other processes' connections, per server name.

        ``servers`` counts those to the servers of the pool, ``leaving``
        those to servers removed; a name not given has none.
        """
        for backend in self.backends.values():
            backend.elsewhere = servers.get(backend.name, 0)
        for backend in list(self.leaving):
            backend.elsewhere = leaving.get(backend.name, 0)
            self._forget_if_done(backend)

    def release(self, backend: Backend) -> None:
        """Count a connection to ``backend`` closed or never made."""
        backend.here -= 1
        self._forget_if_done(backend)

    def record(self, backend: Backend, ok: bool, reason: str = "ok") -> None:
        """Count a health check's result, or a failed connection, for ``backend``.

        A change of state is logged once, with its reason, and its time kept.
        """
        if judge(backend.health, backend.server, self.pool.monitor, ok, reason):
            backend.health.since = self.clock.seconds()

    def _forget_if_done(self, backend: Backend) -> None:
        if backend.removed and not backend.active:
            self.leaving.discard(backend)
