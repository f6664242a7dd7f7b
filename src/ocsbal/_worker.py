"""A worker process: relays the connections of the VIP sockets it is handed.

``python -m ocsbal._worker --grace SECONDS`` is spawned by the control
process (:mod:`ocsbal._control`) with the AMP socket as descriptor 3.  It
relays exactly as a one-process :class:`~ocsbal.PoolService` does, with what
a control process does for it taken out: no health checks (it is told each
server's health), no admin interface, no configuration file (it is sent the
pool), no log file (its events go to the control process).

It stops gracefully on SIGTERM, as ``twistd`` does, and also when its
control process goes away, so that a daemon started again does not share
the VIP's ports with it.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
from collections.abc import Callable, Collection
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorSocket,
    IReactorThreads,
)
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import (
    ILogObserver,
    LogEvent,
    eventAsText,
    globalLogBeginner,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.python.usage import Options
from zope.interface import provider

from ocsbal import _connlog as connlog
from ocsbal._amp import (
    COUNTS_GAP,
    AdoptPort,
    BecomeUser,
    Configure,
    ConnectFailed,
    Counts,
    Elsewhere,
    Figures,
    Health,
    Log,
    MoveQuiet,
    Retire,
    Throttled,
)
from ocsbal._endpoints import ReactorTCPTime, is_ipv6
from ocsbal._moving import close_quiet_here
from ocsbal._pool import AdminState, Backend, RunningPool
from ocsbal._report import figures
from ocsbal.config import parse
from ocsbal.service import PoolService

if TYPE_CHECKING:
    from ocsbal._model import Pool

#: The descriptor the control process gives a worker its AMP socket on.
CONTROL_FD = 3
#: Seconds a stopping worker may take to send what it still has to say.
FLUSH_TIMEOUT = 5.0


class _ReportingPool(RunningPool):
    """A worker's servers: they report counts and failures to the control."""

    def __init__(
        self, pool: Pool, now: Callable[[], float], control: ControlLink
    ) -> None:
        super().__init__(pool, now)
        self.control = control

    def pick(self, tried: Collection[Backend] = ()) -> Backend:
        backend = super().pick(tried)
        self.control.counts_changed()
        return backend

    def release(self, backend: Backend) -> None:
        super().release(backend)
        self.control.counts_changed()

    def record(self, backend: Backend, ok: bool, reason: str = "ok") -> None:
        # The control process judges every server's health, for all workers.
        if not ok:
            self.control.failed(backend, reason)


class WorkerPoolService(PoolService):
    """A :class:`PoolService` whose control process checks, binds and logs.

    :param control: the link to the control process.
    """

    _checks_here = False

    def __init__(
        self,
        pool: Pool,
        control: ControlLink,
        reactor: ReactorTCPTime,
        grace_period: float,
    ) -> None:
        self.control = control
        super().__init__(pool, reactor, grace_period)

    def _running(self, pool: Pool) -> RunningPool:
        return _ReportingPool(pool, self._reactor.seconds, self.control)

    def _bind_port(self, number: int, factory: ServerFactory[Any]) -> IListeningPort:
        fd = self.control.sockets.pop(number)
        family = socket.AF_INET6 if is_ipv6(self.pool.vip) else socket.AF_INET
        reactor = cast(IReactorSocket, self._reactor)
        with socket.socket(fileno=fd):  # the reactor takes a duplicate
            return reactor.adoptStreamPort(fd, family, factory)

    def _apply(self, pool: Pool) -> None:
        # Health checks and the log lines of a change are the control's.
        self.servers.reconfigure(pool)

    def _announce(self) -> None:
        """Say nothing: the control process announces the pool."""

    def _warn(self) -> None:
        """Say nothing: the control process warns."""

    def unbind(self) -> Deferred[None]:
        """Stop accepting; the connections open go on."""
        return Deferred.fromCoroutine(self._unbind())

    async def _unbind(self) -> None:
        ports, self._listening = list(self._listening.values()), {}
        for port in ports:
            await maybeDeferred(port.stopListening)


class ControlLink(amp.AMP):
    """The worker's side of its AMP connection to the control process.

    :param reactor: the worker's reactor.
    :param grace_period: seconds connections may finish in at shutdown.
    """

    def __init__(self, reactor: ReactorTCPTime, grace_period: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.grace_period = grace_period
        self.service: WorkerPoolService | None = None
        #: Listening sockets handed over and not yet listened on, by port.
        self.sockets: dict[int, int] = {}
        self._push_soon = Throttled(reactor, COUNTS_GAP, self._push)
        self._stopping = False
        self._gone: Deferred[None] = Deferred()
        self._identity: tuple[int, int, list[int]] | None = None

    def connectionMade(self) -> None:
        """Send every log event to the control process from now on."""
        super().connectionMade()
        globalLogBeginner.beginLoggingTo(
            [self._forward], discardBuffer=False, redirectStandardIO=False
        )
        cast(IReactorCore, self.reactor).addSystemEventTrigger(
            "before", "shutdown", lambda: Deferred.fromCoroutine(self._stop())
        )

    @provider(ILogObserver)
    def _forward(self, event: LogEvent) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        namespace = event.get("log_namespace", "-")
        fields = None
        if namespace == connlog.NAMESPACE:
            fields = {key: event[key] for key in (*connlog.FIELDS, "aor")}
        if self.transport is not None and not self._link_down():
            self.callRemote(
                Log,
                namespace=namespace,
                level=event["log_level"].name,
                text=text,
                fields=fields,
            )

    def _link_down(self) -> bool:
        return bool(getattr(self.transport, "disconnected", False))

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: ARG002
        """The control process is gone: stop, unbinding first.

        Nothing is written: the output went to the control process too.
        """
        self._gone.callback(None)
        self.shut_down()

    def shut_down(self) -> None:
        """Stop the reactor, once: its shutdown trigger stops the pool."""
        if not self._stopping:
            self._stopping = True
            cast(IReactorCore, self.reactor).stop()

    async def _stop(self) -> None:
        self._stopping = True  # SIGTERM, too, stops the reactor
        if self.service is not None:
            await self.service.stopService()
        # What is still to be sent (the last log lines) goes before the end.
        if self.transport is not None and not self._link_down():
            self.transport.loseConnection()
            with suppress(TimeoutError):
                await self._gone.addTimeout(FLUSH_TIMEOUT, self.reactor)

    @BecomeUser.responder
    def become_user(self, uid: int, gid: int, groups: list[int]) -> dict[str, Any]:
        """Take the control process's identity once the pool is loaded.

        The first :class:`Configure` reads the ``[tls]`` files with the
        privileges the worker was spawned with, as one process does before
        twistd drops them, then switches, before it accepts anything.
        """
        self._identity = (uid, gid, groups)
        return {}

    def _switch_user(self) -> None:
        if self._identity is None:
            return
        uid, gid, groups = self._identity
        if (os.getuid(), os.getgid()) != (uid, gid):
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)

    @AdoptPort.responder
    def adopt_port(self, number: int, socket: int) -> dict[str, Any]:
        """Keep the socket of port ``number`` until the pool listens on it."""
        self.sockets[number] = socket
        return {}

    @Configure.responder
    def configure(
        self, pool: str, servers: dict[str, Any], close: list[str]
    ) -> Deferred[dict[str, Any]]:
        """Make ``pool`` the pool, with its servers' state and health."""
        return Deferred.fromCoroutine(self._configure(pool, servers, close))

    async def _configure(
        self, text: str, servers: dict[str, Any], close: list[str]
    ) -> dict[str, Any]:
        pool = attrs.evolve(parse(text, "the control process"), admin=None)
        if self.service is None:
            self.service = WorkerPoolService(
                pool, self, self.reactor, self.grace_period
            )
            self._switch_user()
            self.service.startService()
            gc.freeze()  # as twistd ocsbal does: see ocsbal.tap
        else:
            await self.service.reload(pool)
        running = self.service.servers
        for name, wanted in servers.items():
            backend = running.backends.get(name)
            if backend is not None:
                running.set_state(name, AdminState(wanted["state"]))
                running.set_up(backend, wanted["up"])
        for name in close:
            running.close_removing(name)
        return {}

    @Health.responder
    def health(self, server: str, up: bool) -> dict[str, Any]:
        """Take ``server`` up or down."""
        if self.service is not None:
            running = self.service.servers
            backend = running.backends.get(server)
            if backend is not None:
                running.set_up(backend, up)
        return {}

    @Elsewhere.responder
    def elsewhere(self, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Rank the servers by the host's counts from now on."""
        if self.service is not None:
            self.service.servers.count_elsewhere(counts["servers"], counts["leaving"])
        return {}

    @Figures.responder
    def figures(self, connections: bool) -> dict[str, Any]:
        """What this worker counts."""
        if self.service is None:
            return {"figures": {}}
        return {"figures": figures(self.service.relay, connections)}

    @MoveQuiet.responder
    def move_quiet(self, server: str, most: int) -> dict[str, Any]:
        """Close up to ``most`` of ``server``'s quiet connections here."""
        backend = None
        if self.service is not None:
            backend = self.service.servers.backends.get(server)
        return {"closed": 0 if backend is None else close_quiet_here(backend, most)}

    @Retire.responder
    def retire(self, timeout: float) -> dict[str, Any]:
        """Stop accepting now; exit once the connections are closed."""
        Deferred.fromCoroutine(self._retire(timeout))
        return {}

    async def _retire(self, timeout: float) -> None:
        service = self.service
        if service is not None:
            await service.unbind()
            service.grace_period = timeout
        self.shut_down()

    def counts_changed(self) -> None:
        """Report this worker's counts soon (:class:`~ocsbal._amp.Throttled`)."""
        self._push_soon()

    def _push(self) -> None:
        if self.service is None or self._link_down():
            return
        running = self.service.servers
        self.callRemote(
            Counts,
            counts={
                "servers": {b.name: b.here for b in running.backends.values()},
                "leaving": {b.name: b.here for b in running.leaving},
            },
        )

    def failed(self, backend: Backend, reason: str) -> None:
        """Tell the control process that a connection to ``backend`` failed."""
        if not self._link_down():
            self.callRemote(
                ConnectFailed,
                server=backend.name,
                address=backend.server.address,
                reason=reason,
            )


class _Options(Options):
    optParameters = [  # noqa: RUF012 -- usage.Options reads this class attribute
        ["grace", None, 0.0, "Seconds connections may finish in at shutdown.", float]
    ]


def main(argv: list[str]) -> None:
    """Run a worker until its control process stops it."""
    options = _Options()
    options.parseOptions(argv)
    # The control process reloads and restarts; the same signals sent to
    # the whole process group must not stop its workers.
    for number in (signal.SIGHUP, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)
    from twisted.internet import reactor

    link = ControlLink(cast(ReactorTCPTime, reactor), options["grace"])
    factory = cast(ServerFactory[Any], ServerFactory.forProtocol(lambda: link))
    with socket.socket(fileno=CONTROL_FD):  # the reactor takes a duplicate
        cast(IReactorSocket, reactor).adoptStreamConnection(
            CONTROL_FD, socket.AF_UNIX, factory
        )
    core = cast(IReactorCore, reactor)
    core.callWhenRunning(_stop_on_signals, link)
    core.run()


def _stop_on_signals(link: ControlLink) -> None:
    """SIGTERM and SIGINT stop the worker once, however many arrive.

    Twisted's own handlers would call ``reactor.stop`` for each, and fail
    on the second: a worker gets one from its control process and, when
    the whole process group is signalled, another.
    """
    threads = cast(IReactorThreads, link.reactor)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: threads.callFromThread(link.shut_down))


if __name__ == "__main__":
    main(sys.argv[1:])
