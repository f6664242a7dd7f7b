""":class:`PoolService`: a pool's listeners as a Twisted service.

Add it to any service tree (``pool_service.setServiceParent(application)``),
or let ``twistd ocsbal`` do so.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from ocsbal._endpoints import ReactorTCPTime
from ocsbal._idle import IdleTimeout, too_short_for_ocs
from ocsbal._listener import Listener, pause_accepting
from ocsbal._moving import Mover, close_quiet_here
from ocsbal._network import NetworkSetupError, check_network, listen_freebind
from ocsbal._pool import AdminState, LastServerError, RunningPool, UnknownServerError
from ocsbal._relay import Relay
from ocsbal._reloader import ConfigReloader, ReloadError
from ocsbal._report import figures
from ocsbal._statefile import read_state, write_state
from ocsbal._sweep import sweep as sweep_idle
from ocsbal._tls import TLSSetupError
from ocsbal._token import read_token
from ocsbal.admin import AdminService, NoWorkersError
from ocsbal.monitors import HealthChecks, monitor_for
from ocsbal.sip import COMPILED

if TYPE_CHECKING:
    from ocsbal._model import Pool, Port, Server
    from ocsbal._pool import Backend

__all__ = [
    "ConfigReloader",
    "LastServerError",
    "NetworkSetupError",
    "PoolService",
    "ReloadError",
    "TLSSetupError",
    "UnknownServerError",
]

log = Logger(namespace="ocsbal")

#: Connections the kernel may hold for a VIP port before ocsbal accepts
#: them (capped by net.core.somaxconn): after a failover every client of
#: the pool reconnects at once, and Twisted's default of 50 would drop most
#: of their SYNs.
LISTEN_BACKLOG = socket.SOMAXCONN

#: After the grace period, connections are closed politely; those that still
#: have not flushed their buffers this many seconds later are aborted.
CLOSE_TIMEOUT = 5.0


class PoolService(MultiService):
    """Balance a pool's VIP ports over its servers.

    Listeners are bound in :meth:`privilegedStartService` (so ``twistd`` can
    bind ports below 1024 before dropping privileges) or, for embedders who
    call :meth:`startService` directly, there.  Either all ports bind or the
    start fails and none stays bound.

    While it runs, servers are added, removed, re-weighted, drained and put
    in maintenance, and whole new configurations applied with
    :meth:`reload`, without closing any connection.

    The idle sweep (:attr:`sweeper`) and the health checks (:attr:`health`)
    are child services.

    :param pool: the pool to balance.
    :param reactor: provides TCP and time; the global reactor by default.
    :param grace_period: seconds :meth:`stopService` lets open connections
        run to completion before closing them.
    :param state_file: where the operator's changes are kept; by default
        ``[admin] state_file`` (none without ``[admin]``).
    :raises TLSSetupError: if the pool terminates TLS and a ``[tls]`` file
        cannot be read or used.

    Starting raises :class:`NetworkSetupError`, with nothing bound, if the
    VIP is not an address of this host (and ``freebind`` is off), or if
    half-NAT's transparent sockets are not allowed.

    :ivar servers: the pool's servers at run time: health, state, load.
    :ivar relay: the pool's connections.
    :ivar sweeper: the idle sweep.
    :ivar health: the health checks.
    :ivar mover: moves drained servers' clients, and rebalances.
    :ivar admin: the admin interface, if the pool has an ``[admin]`` section.
    """

    def __init__(
        self,
        pool: Pool,
        reactor: ReactorTCPTime | None = None,
        grace_period: float = 0.0,
        state_file: str | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = cast(ReactorTCPTime, _reactor)
        self.grace_period = grace_period
        self._reactor = reactor
        #: The pool as configured, before the operator's changes.
        self.configured = pool
        self._kept_in = state_file
        self.overrides = read_state(self._state_file)
        pool, states = self.overrides.apply(pool)
        self.servers = self._running(pool)
        self._set_states(states)
        self.relay = Relay(self.servers, reactor, pause=self._pause_accepting)
        self._started = reactor.seconds()
        self._listening: dict[int, IListeningPort] = {}
        self._listeners: dict[int, Listener] = {}
        self.sweeper = self._sweeping()
        self.health = self._checker()
        self.mover = Mover(reactor, lambda: self.servers, self._close_quiet)
        self.admin: AdminService | None = None
        if pool.admin is not None:
            self.admin = AdminService(self, pool.admin, reactor)
            self.admin.setServiceParent(self)

    @property
    def pool(self) -> Pool:
        """The configuration in force, with the run-time changes made to it."""
        return self.servers.pool

    @property
    def _state_file(self) -> str | None:
        admin = self.configured.admin
        if self._kept_in is not None or admin is None:
            return self._kept_in
        return admin.state_file

    def _set_states(self, states: dict[str, str]) -> None:
        """Give every server the state the operator gave it, else ready."""
        for name, backend in self.servers.backends.items():
            state = AdminState(states.get(name, AdminState.READY.value))
            if backend.state is not state:
                self.servers.set_state(name, state)

    def _remember(self, name: str, **values: Any) -> None:
        """Keep an operator's change of server ``name`` across reloads and restarts."""
        self.overrides.change(self.configured, name, **values)
        write_state(self._state_file, self.overrides)

    def overridden(self, name: str) -> dict[str, Any]:
        """What server ``name`` runs with that the file does not say.

        See :meth:`ocsbal._overrides.Overrides.differences`.
        """
        return self.overrides.differences(self.configured, name)

    def every_override(self) -> dict[str, dict[str, Any]]:
        """:meth:`overridden` of every server the operator changed, by name."""
        return {name: self.overridden(name) for name in self.overrides.servers}

    def forget(self, name: str | None = None) -> Deferred[list[str]]:
        """Drop the operator's changes to server ``name`` (all, by default).

        The servers take what the file says again, at once.

        :return: a Deferred firing with the names whose changes were dropped.
        """
        names = self.overrides.forget(name)
        write_state(self._state_file, self.overrides)
        log.info(
            "the operator's changes to {names} are forgotten; the file's apply",
            names=", ".join(names) or "no server",
        )
        return self.reload(self.configured).addCallback(lambda _: names)

    def _running(self, pool: Pool) -> RunningPool:
        """The pool at run time (a worker's reports to its control process)."""
        return RunningPool(pool, self._reactor.seconds)

    def figures(self, connections: bool = False) -> Deferred[dict[str, Any]]:
        """What the pool's connections count: see :func:`ocsbal._report.figures`."""
        return succeed(figures(self.relay, connections))

    def workers(self) -> list[dict[str, Any]]:
        """The one process that relays, as ``/api/workers`` lists it."""
        return [
            {
                "worker": 1,
                "pid": os.getpid(),
                "generation": 1,
                "state": "running",
                "connections": len(self.relay.splices),
                "started": self._started,
                "restarts": 0,
            }
        ]

    def restart_workers(self) -> Deferred[None]:
        """Fail: one process relays, and has no workers to restart."""
        return fail(
            NoWorkersError(
                "this pool runs in one process ([pool] workers = 1, or "
                "embedded): there are no workers to restart"
            )
        )

    def _sweeping(self) -> TimerService:
        interval = IdleTimeout(self.pool.idle_timeout).sweep_interval
        sweep = TimerService(interval, sweep_idle, self.relay)
        sweep.clock = self._reactor
        sweep.setServiceParent(self)
        return sweep

    def _checker(self) -> HealthChecks:
        pool = self.pool
        checks = HealthChecks(
            self.servers,
            monitor_for(pool, self._reactor, self.relay.tls),
            pool.monitor.interval,
            self._reactor,
        )
        if self._checks_here:
            checks.setServiceParent(self)
        return checks

    #: Whether this process runs the health checks; a worker's never start:
    #: its control process checks and tells it.
    _checks_here = True

    def privilegedStartService(self) -> None:
        """Bind every VIP port, and the admin interface's."""
        self._bind()
        self._unless_it_fails(super().privilegedStartService)

    def startService(self) -> None:
        """Bind every port if not bound yet; start the idle sweep and checks."""
        if not self._listening:
            self._bind()
        self._unless_it_fails(super().startService)
        if self._checks_here:  # a worker's control process moves and rebalances
            self.mover.begin()
        self._announce()

    def _announce(self) -> None:
        """Say what the pool does, once started; warn of what it should not."""
        ports, servers = len(self._listening), len(self.pool.servers)
        log.info(
            "pool {pool} ({fqdn}) balancing {ports} port{s_ports} on {vip} over "
            "{servers} server{s_servers} with {scheduler}; SIP followed by "
            "{sip_path}",
            pool=self.pool.name,
            fqdn=self.pool.fqdn,
            ports=ports,
            s_ports="" if ports == 1 else "s",
            vip=self.pool.vip,
            servers=servers,
            s_servers="" if servers == 1 else "s",
            scheduler=self.pool.scheduler,
            sip_path="compiled code" if COMPILED else "Python (not compiled here)",
        )
        self._warn()

    def _unless_it_fails(self, start: Callable[[], None]) -> None:
        """Run ``start``; if it fails, unbind the VIP ports: nothing half-way."""
        try:
            start()
        except Exception:
            for port in self._listening.values():
                port.stopListening()
            self._listening, self._listeners = {}, {}
            raise

    def _warn(self) -> None:
        warning = too_short_for_ocs(self.pool.name, self.pool.idle_timeout)
        if warning is not None:
            log.warn("{warning}", warning=warning, pool=self.pool.name)

    def _bind(self) -> None:
        check_network(self.pool)
        self._listen(self.pool.ports)

    def _listen(self, ports: Iterable[Port]) -> None:
        """Bind ``ports`` on the VIP: all of them, or none and raise."""
        bound: dict[int, IListeningPort] = {}
        listeners = {port.number: Listener(self.relay, port) for port in ports}
        try:
            for number, listener in listeners.items():
                bound[number] = self._bind_port(number, listener.factory())
        except Exception:
            for port in bound.values():
                port.stopListening()
            raise
        if self.relay.admission.paused:  # a port bound meanwhile waits too
            pause_accepting(bound.values(), True)
        self._listening.update(bound)
        self._listeners.update(listeners)

    def _pause_accepting(self, paused: bool) -> None:
        pause_accepting(self._listening.values(), paused)

    def _bind_port(self, number: int, factory: ServerFactory[Any]) -> IListeningPort:
        """Listen on VIP port ``number`` with ``factory``."""
        if self.pool.freebind:
            return listen_freebind(
                cast(IReactorSocket, self._reactor),
                number,
                factory,
                self.pool.vip,
                LISTEN_BACKLOG,
            )
        return self._reactor.listenTCP(number, factory, LISTEN_BACKLOG, self.pool.vip)

    def add_server(self, server: Server) -> Deferred[None]:
        """Add ``server``; it takes connections once its health checks pass.

        The change is made at once; the Deferred returned fires once it is
        in force in every process that relays (here: already).

        :raises ConfigError: if the pool would break a rule with it (its name
            or address already in use, its address the VIP's); nothing
            changes then.
        """
        self._apply(attrs.evolve(self.pool, servers=(*self.pool.servers, server)))
        added = {"address": server.address, "weight": server.weight}
        self._remember(server.name, added=added)
        return succeed(None)

    def remove_server(self, name: str, force: bool = False) -> Deferred[None]:
        """Remove server ``name``: no new connection goes to it from now on.

        Its open connections run to their end, or are closed now with
        ``force``, as are those of any server of that name being removed.
        Of a server being removed already, only ``force`` changes anything.

        :raises UnknownServerError: if there is no such server.
        :raises LastServerError: if it is the last server; nothing changes then.
        """
        if not self.servers.find(name).removed:
            servers = [s for s in self.pool.servers if s.name != name]
            if not servers:
                raise LastServerError(
                    f"{name} is the pool's last server; add another before removing it"
                )
            self._apply(attrs.evolve(self.pool, servers=servers))
            self._remember(name, removed=True)
        if force:
            self.servers.close_removing(name)
        return succeed(None)

    def reweight(self, name: str, weight: int) -> Deferred[None]:
        """Give server ``name`` a new weight, for new connections.

        :raises UnknownServerError: if there is no such server.
        :raises ValueError: if the weight is not allowed; nothing changes then.
        """
        server = attrs.evolve(self.servers.backend(name).server, weight=weight)
        servers = [server if s.name == name else s for s in self.pool.servers]
        self._apply(attrs.evolve(self.pool, servers=servers))
        self._remember(name, weight=weight)
        log.info("server {server} weight is now {weight}", server=name, weight=weight)
        return succeed(None)

    def set_state(
        self, name: str, state: AdminState, move_within: float | None = None
    ) -> Deferred[None]:
        """Set what server ``name`` may do: ready, drain or maint.

        :param move_within: with ``drain``, seconds within which its
            connections are closed, each at a quiet moment, so that their
            clients reconnect to the others (:mod:`ocsbal._moving`).
        :raises UnknownServerError: if there is no such server.
        """
        backend = self.servers.backend(name)
        if state is AdminState.DRAIN and move_within:
            self.mover.start(name, move_within)
        elif state is not AdminState.DRAIN:
            self.mover.stop(name)
        if state is backend.state:
            return succeed(None)
        self.servers.set_state(name, state)
        self._remember(name, state=state.value)
        log.info(
            "server {server} is now in state {state}: {meaning}",
            server=name,
            state=state.value,
            meaning=_STATE_MEANINGS[state],
        )
        return succeed(None)

    def _apply(self, pool: Pool) -> None:
        added, removed = self.servers.reconfigure(pool)
        for backend in removed:
            self.health.unwatch(backend)
            log.info(
                "server {server} ({address}) removed; its {active} open "
                "connections may finish",
                server=backend.name,
                address=backend.server.address,
                active=backend.active,
            )
        for backend in added:
            self.health.watch(backend)
            log.info(
                "server {server} ({address}) added; it takes connections "
                "once {rise} checks in a row pass",
                server=backend.name,
                address=backend.server.address,
                rise=pool.monitor.rise,
            )

    def reload(self, pool: Pool) -> Deferred[None]:
        """Make ``pool`` the configuration in force, dropping no connection.

        Listeners are bound for new ports and closed for ports gone; servers
        are added, removed (their connections finish), re-weighted; the
        scheduler, idle timeout, monitor and timeouts take their new values.
        Servers keep their state (ready, drain, maint) and health.

        :raises ReloadError: if the VIP, the NAT mode, ``freebind``, the
            ``[tls]`` section, whether a port's TLS is terminated, or where
            the admin interface listens would change, which needs a restart;
            nothing changes then.
        :raises AdminTokenError: if the admin token file cannot be read;
            nothing changes then.
        :raises CannotListenError: if a new port cannot be bound; nothing
            changes then.
        """
        return Deferred.fromCoroutine(self._reload(pool))

    async def _reload(self, configured: Pool) -> None:
        old = self.pool
        # The operator's changes lie over the file's; kept only if it applies.
        overrides = self.overrides.copy()
        said = list(overrides.reconcile(self.configured, configured))
        pool, states = overrides.apply(configured)
        self._refuse_restart_changes(pool)
        token = None if pool.admin is None else read_token(pool.admin)
        wanted = {port.number: port for port in pool.ports}
        if self._listening:
            self._listen(p for n, p in wanted.items() if n not in self._listening)
        # From here on, nothing can fail: the change is applied whole.
        if self.admin is not None and pool.admin is not None:
            self.admin.use(pool.admin, token)
        closing = []
        for number in list(self._listening):
            if number in wanted:
                self._listeners[number].port = wanted[number]
            else:
                del self._listeners[number]
                closing.append(maybeDeferred(self._listening.pop(number).stopListening))
        self._apply(pool)
        self.configured, self.overrides = configured, overrides
        self._set_states(states)
        write_state(self._state_file, overrides)
        for sentence in said:
            log.warn("{sentence}", sentence=sentence)
        if IdleTimeout(pool.idle_timeout).sweep_interval != self.sweeper.step:
            await self.sweeper.disownServiceParent()
            self.sweeper = self._sweeping()
        if (old.monitor, old.heartbeat_ports) != (pool.monitor, pool.heartbeat_ports):
            if self.health.parent is not None:  # a worker's checks never run
                await self.health.disownServiceParent()
            self.health = self._checker()
        await DeferredList(closing)
        self._warn()

    def _refuse_restart_changes(self, pool: Pool) -> None:
        """Raise :class:`ReloadError` if ``pool`` changes what needs a restart."""
        old = self.pool
        fixed = {
            "vip": (old.vip, pool.vip),
            "nat": (old.nat.value, pool.nat.value),
            "freebind": tuple(
                "yes" if f else "no" for f in (old.freebind, pool.freebind)
            ),
            "workers": tuple(
                "auto" if w is None else str(w) for w in (old.workers, pool.workers)
            ),
        }
        for key, (before, after) in fixed.items():
            if before != after:
                raise ReloadError(
                    f"[pool] {key} cannot change from {before} to {after} while "
                    "running; restart to change it"
                )
        if old.tls != pool.tls:
            raise ReloadError("[tls] cannot change while running; restart to change it")
        for port in pool.ports:
            listener = self._listeners.get(port.number)
            if listener and self.relay.terminates(
                listener.port
            ) != self.relay.terminates(port):
                raise ReloadError(
                    f"[ports] {port.number} cannot change between a terminated "
                    "TLS port and another while running; restart to change it"
                )
        listen = [a and a.listen for a in (old.admin, pool.admin)]
        if listen[0] != listen[1]:
            raise ReloadError(
                "[admin] listen cannot change while running; restart to change it"
            )

    def stopService(self) -> Deferred[None]:
        """Stop accepting, then close open connections after the grace period.

        The returned Deferred fires once every connection is closed.
        """
        return Deferred.fromCoroutine(self._stop())

    def _close_quiet(self, backend: Backend, most: int) -> Deferred[int]:
        """Close up to ``most`` of ``backend``'s quiet connections (here, all)."""
        return succeed(close_quiet_here(backend, most))

    async def _stop(self) -> None:
        self.mover.shut_down()
        ports, self._listening = list(self._listening.values()), {}
        self._listeners = {}
        await DeferredList([maybeDeferred(p.stopListening) for p in ports])
        await super().stopService()  # the idle sweep and the health checks
        relay = self.relay
        if relay.splices and self.grace_period > 0:
            await self._within(relay.when_empty(), self.grace_period)
        for splice in list(relay.splices):
            splice.close("shutdown")
        if relay.splices:
            await self._within(relay.when_empty(), CLOSE_TIMEOUT)
        for splice in list(relay.splices):
            splice.abort("shutdown")
        relay.log.flush()  # the repeats counted so far

    async def _within(self, d: Deferred[None], seconds: float) -> None:
        """Wait for ``d``, but no longer than ``seconds``."""
        with suppress(TimeoutError):
            await d.addTimeout(seconds, self._reactor)


_STATE_MEANINGS = {
    AdminState.READY: "it takes new connections while it is up",
    AdminState.DRAIN: "no new connections; open ones continue",
    AdminState.MAINT: "no new connections, no health checks; open ones continue",
}
