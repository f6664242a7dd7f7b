"""The control process of a pool relayed by several worker processes.

``[pool] workers`` above 1 makes ``twistd ocsbal`` run a
:class:`ControlService`: a :class:`~ocsbal.PoolService` that relays nothing
itself.  It binds every VIP port as one ``SO_REUSEPORT`` socket per worker,
so the kernel spreads new connections evenly, before privileges drop; it
spawns the workers (:mod:`ocsbal._worker`), hands each its sockets over AMP
(:mod:`ocsbal._amp`) and sends each the pool.  It runs the health checks,
the admin interface and the configuration reloads, and passes their results
to every worker; it adds up what the workers count for the API and
``/metrics``, and passes each worker the others' connection counts, so that
weighted least connections ranks the servers as one process would.

A worker that dies is replaced on the same sockets (connections waiting in
its accept queue are served by the next); a restart of the workers starts
a new generation on the same sockets and retires the old one, which stops
accepting and leaves once its connections have closed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import (
    IListeningPort,
    IProcessTransport,
    IReactorProcess,
    IReactorSocket,
    IReactorThreads,
)
from twisted.internet.protocol import ProcessProtocol, ServerFactory, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp
from twisted.python.failure import Failure

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
from ocsbal._connlog import FORMAT
from ocsbal._endpoints import ReactorTCPTime
from ocsbal._network import SharedPort
from ocsbal._pool import AdminState, Backend, RunningPool
from ocsbal._report import add_figures, figures
from ocsbal.config import render
from ocsbal.service import CLOSE_TIMEOUT, LISTEN_BACKLOG, PoolService

if TYPE_CHECKING:
    from ocsbal._model import Pool, Server

__all__ = ["ControlService"]

log = Logger(namespace="ocsbal")

#: Seconds before a dead worker is replaced; longer if it died young, so
#: that a worker that cannot start does not spin.
RESPAWN_DELAY = 0.5
RESPAWN_DELAY_YOUNG = 2.0
#: A worker that dies within this many seconds of its start died young.
YOUNG = 10.0
#: The longest line of a worker's output kept whole; longer ones are cut.
MAX_OUTPUT_LINE = 64 * 1024


class WorkerLink(amp.AMP):
    """The control's side of one worker's AMP connection.

    :ivar slot: which worker it is, from 0: which socket of each port it has.
    :ivar generation: which start of the workers it belongs to.
    :ivar stage: ``starting``, ``running`` or ``old`` (retired, finishing).
    :ivar started: when it was spawned, by the reactor's clock.
    :ivar counts: its connections per server, as it last reported them.
    :ivar unlinked: fires once its link is closed, every line it sent read:
        its process's end may be known first.
    """

    def __init__(
        self, control: ControlService, slot: int, generation: int, started: float
    ) -> None:
        super().__init__()
        self.control = control
        self.slot, self.generation = slot, generation
        self.stage = "starting"
        self.pid = 0
        self.started = started
        self.counts: dict[str, dict[str, int]] = {"servers": {}, "leaving": {}}
        self.told: dict[str, dict[str, int]] | None = None
        self.ports: set[int] = set()
        self.process: IProcessTransport | None = None
        self.ended: Deferred[None] = Deferred()
        self.unlinked: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The worker is gone, or going: what it sent has all been read."""
        super().connectionLost(reason)
        self.unlinked.callback(None)

    @property
    def name(self) -> str:
        """How the log names it."""
        return f"worker {self.slot + 1} (pid {self.pid})"

    @Counts.responder
    def counted(self, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        """Take the worker's new counts."""
        self.counts = counts
        self.control.counts_changed()
        return {}

    @ConnectFailed.responder
    def connect_failed(self, server: str, address: str, reason: str) -> dict[str, Any]:
        """Count a failed connection as a failed check of the server."""
        servers = self.control.servers
        backend = servers.backends.get(server)
        if backend is not None and backend.server.address == address:
            servers.record(backend, False, reason)
        return {}

    @Log.responder
    def logged(
        self,
        namespace: str,
        level: str,
        text: str,
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one of the worker's log events to the log, in its namespace.

        A connection's event keeps its fields, and its line its form.
        """
        logger, at = Logger(namespace=namespace), LogLevel.levelWithName(level)
        if fields is not None:
            logger.emit(at, FORMAT, worker=self.slot + 1, **fields)
        else:
            logger.emit(at, "worker {worker}: {text}", worker=self.slot + 1, text=text)
        return {}


class _WorkerProcess(ProcessProtocol):
    """A worker's process: its output is logged, its end handled."""

    def __init__(self, link: WorkerLink) -> None:
        self.link = link
        self._pending = b""

    def outReceived(self, data: bytes) -> None:
        self.errReceived(data)

    def errReceived(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > MAX_OUTPUT_LINE:  # bounded, newline or not
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            log.warn(
                "worker {worker}: {line}",
                worker=self.link.slot + 1,
                line=line.decode("utf-8", "replace"),
            )

    def processEnded(self, reason: Failure) -> None:
        self.link.control.worker_ended(self.link, reason)


class ControlService(PoolService):
    """The pool's control process: binds, checks, reports; workers relay.

    :param pool: the pool to balance.
    :param workers: how many worker processes relay it.
    :param reactor: the global reactor by default; it must spawn processes.
    :param grace_period: seconds the workers let open connections run to
        completion at shutdown.
    """

    def __init__(
        self,
        pool: Pool,
        workers: int,
        reactor: ReactorTCPTime | None = None,
        grace_period: float = 0.0,
        state_file: str | None = None,
    ) -> None:
        self.count = workers
        self._links: dict[int, WorkerLink] = {}
        self._old: set[WorkerLink] = set()
        self._restarts: Counter[int] = Counter()
        self._generation = 1
        self._stopping = False
        #: Who waits for the restart in progress, if one is.
        self._restarting: list[Deferred[None]] | None = None
        self._previous_usr2: Any = signal.SIG_DFL
        super().__init__(pool, reactor, grace_period, state_file)
        self._recount_soon = Throttled(self._reactor, COUNTS_GAP, self._recount)

    def _running(self, pool: Pool) -> RunningPool:
        return RunningPool(pool, self._reactor.seconds, self.tell_health)

    def _bind_port(self, number: int, factory: ServerFactory[Any]) -> IListeningPort:  # noqa: ARG002
        return SharedPort(
            self.pool.vip,
            number,
            self.count,
            self.pool.freebind,
            LISTEN_BACKLOG,
            by_source=self.pool.limits.any,
        )

    def privilegedStartService(self) -> None:
        """Bind every VIP port, and spawn the workers while still privileged.

        ``twistd --uid`` may drop to a user who cannot run this Python (one
        installed in root's home); a worker started now takes that user's
        identity when :meth:`startService` tells it.
        """
        super().privilegedStartService()
        for slot in range(self.count):
            self._launch(slot)

    def startService(self) -> None:
        """Start the checks and the admin interface, then the workers."""
        super().startService()
        for slot in range(self.count):
            if slot not in self._links:  # embedded: not started privileged
                self._launch(slot)
        Deferred.fromCoroutine(self._start_all()).addErrback(self._not_started)
        self._previous_usr2 = signal.signal(signal.SIGUSR2, self._usr2)

    def _not_started(self, failure: Failure) -> None:
        # A worker that died while starting is replaced; a stop cuts it short.
        if not self._stopping:
            log.failure("starting the workers failed", failure)

    async def _start_all(self) -> None:
        links = list(self._links.values())
        await gatherResults([Deferred.fromCoroutine(self._bring_up(k)) for k in links])
        log.info(
            "pool {pool} relays in {count} worker processes: pids {pids}",
            pool=self.pool.name,
            count=self.count,
            pids=", ".join(str(link.pid) for link in self._links.values()),
        )

    def _usr2(self, signum: int, frame: object) -> None:
        # A signal handler may interrupt anything: hand over to the reactor.
        cast(IReactorThreads, self._reactor).callFromThread(self._restart_logged)
        if callable(self._previous_usr2):  # another pool's workers restart too
            self._previous_usr2(signum, frame)

    def _restart_logged(self) -> None:
        self.restart_workers().addErrback(
            lambda f: log.failure("restarting the workers failed", f)
        )

    def _spawn(self, slot: int) -> Deferred[None]:
        """Start a worker of the current generation in ``slot``; fires when it runs."""
        return Deferred.fromCoroutine(self._bring_up(self._launch(slot)))

    def _launch(self, slot: int) -> WorkerLink:
        """Spawn a worker of the current generation and connect to it."""
        link = WorkerLink(self, slot, self._generation, self._reactor.seconds())
        command = ("-m", "ocsbal._worker", "--grace", repr(self.grace_period))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            process = cast(IReactorProcess, self._reactor).spawnProcess(
                _WorkerProcess(link),
                sys.executable,
                [sys.executable, *command],
                env=os.environ.copy(),
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
            link.process, link.pid = process, cast(int, process.pid)
            # The reactor takes a duplicate of our end.
            cast(IReactorSocket, self._reactor).adoptStreamConnection(
                ours.fileno(),
                socket.AF_UNIX,
                cast(ServerFactory[Any], ServerFactory.forProtocol(lambda: link)),
            )
        self._links[slot] = link
        return link

    async def _bring_up(self, link: WorkerLink) -> None:
        """Give a new worker this process's identity, its sockets and the pool."""
        await link.callRemote(
            BecomeUser, uid=os.getuid(), gid=os.getgid(), groups=os.getgroups()
        )
        await self._configure(link)
        link.stage = "running"

    async def _configure(self, link: WorkerLink, close: Iterable[str] = ()) -> None:
        """Hand ``link`` the sockets it lacks, then the whole pool.

        Every message is sent before any answer is awaited, so that what
        one call sends is never interleaved with another's: the worker
        applies the configurations in the order they were made.
        """
        sent = []
        if link.stage != "old":
            for number, port in self._listening.items():
                if number not in link.ports:
                    link.ports.add(number)
                    fd = cast(SharedPort, port).sockets[link.slot].fileno()
                    sent.append(link.callRemote(AdoptPort, number=number, socket=fd))
        servers = {
            name: {"state": b.state.value, "up": b.health.up}
            for name, b in self.servers.backends.items()
        }
        sent.append(
            link.callRemote(
                Configure, pool=render(self.pool), servers=servers, close=list(close)
            )
        )
        await gatherResults(sent, consumeErrors=True)

    def _all(self) -> list[WorkerLink]:
        return [*self._links.values(), *self._old]

    def _tell_all(self, close: Iterable[str] = ()) -> Deferred[None]:
        """Configure every worker; fires once all of them have applied it."""
        close = list(close)
        done = [
            Deferred.fromCoroutine(self._configure(link, close)).addErrback(
                self._not_told, link
            )
            for link in self._all()
        ]
        return DeferredList(done).addCallback(lambda _: None)

    def _not_told(self, failure: Failure, link: WorkerLink) -> None:
        if link.stage != "ended":  # a worker that died is replaced, configured
            log.failure("{name} did not apply the change", failure, name=link.name)

    def add_server(self, server: Server) -> Deferred[None]:
        """Add ``server`` in every worker; see :meth:`PoolService.add_server`."""
        super().add_server(server)
        return self._tell_all()

    def remove_server(self, name: str, force: bool = False) -> Deferred[None]:
        """Remove a server in every worker; see :meth:`PoolService.remove_server`."""
        super().remove_server(name, force)
        return self._tell_all([name] if force else [])

    def reweight(self, name: str, weight: int) -> Deferred[None]:
        """Re-weight a server in every worker; see :meth:`PoolService.reweight`."""
        super().reweight(name, weight)
        return self._tell_all()

    def set_state(
        self, name: str, state: AdminState, move_within: float | None = None
    ) -> Deferred[None]:
        """Set a server's state in every worker; see :meth:`PoolService.set_state`."""
        super().set_state(name, state, move_within)
        return self._tell_all()

    def _close_quiet(self, backend: Backend, most: int) -> Deferred[int]:
        """Have the workers close up to ``most`` of its quiet connections."""
        return Deferred.fromCoroutine(self._close_quiet_in_workers(backend, most))

    async def _close_quiet_in_workers(self, backend: Backend, most: int) -> int:
        closed = 0
        for link in self._all():
            if closed >= most:
                break
            if link.stage in ("running", "old"):  # the old hold some too
                answer = await link.callRemote(
                    MoveQuiet, server=backend.name, most=most - closed
                )
                closed += answer["closed"]
        return closed

    async def _reload(self, pool: Pool) -> None:
        await super()._reload(pool)
        for port in self._listening.values():  # [limits] set or lifted
            cast(SharedPort, port).steer(self.pool.limits.any)
        await self._tell_all()

    def tell_health(self, backend: Backend) -> None:
        """Tell every worker that ``backend`` went up or down."""
        for link in self._all():
            link.callRemote(Health, server=backend.name, up=backend.health.up)

    def counts_changed(self) -> None:
        """Add up the workers' counts, and pass them on, soon (:class:`Throttled`)."""
        self._recount_soon()

    def _recount(self) -> None:
        links = self._all()
        total = {kind: Counter[str]() for kind in ("servers", "leaving")}
        for link in links:
            for kind, counter in total.items():
                counter.update(link.counts[kind])
        self.servers.count_elsewhere(total["servers"], total["leaving"])
        for link in links:
            if link.stage == "starting":
                continue
            others = {
                kind: dict(counter - Counter(link.counts[kind]))
                for kind, counter in total.items()
            }
            if others != link.told:
                link.told = others
                link.callRemote(Elsewhere, counts=others)

    def figures(self, connections: bool = False) -> Deferred[dict[str, Any]]:
        """What every worker counts, added up."""
        asked = [
            link.callRemote(Figures, connections=connections)
            for link in self._all()
            if link.stage != "starting"
        ]

        def add(answers: list[tuple[bool, Any]]) -> dict[str, Any]:
            parts = [figures(self.relay, connections)]  # every key, at 0
            parts += [answer["figures"] for ok, answer in answers if ok]
            return add_figures(parts)

        return DeferredList(asked, consumeErrors=True).addCallback(add)

    def workers(self) -> list[dict[str, Any]]:
        """Every worker process, current and old."""
        return [
            {
                "worker": link.slot + 1,
                "pid": link.pid,
                "generation": link.generation,
                "state": link.stage,
                "connections": sum(sum(c.values()) for c in link.counts.values()),
                "started": link.started,
                "restarts": self._restarts[link.slot],
            }
            for link in sorted(self._all(), key=lambda k: (k.generation, k.slot))
        ]

    def restart_workers(self) -> Deferred[None]:
        """Start a new generation of workers; retire the old one once it serves.

        Fires once the new workers accept and the old ones have stopped
        accepting; the old ones leave when their connections have closed,
        or after ``[pool] old_workers_timeout``.
        """
        if self._restarting is None:
            self._restarting = []
            Deferred.fromCoroutine(self._restart()).addBoth(self._restarted)
        d: Deferred[None] = Deferred()
        self._restarting.append(d)
        return d

    def _restarted(self, result: object) -> None:
        waiting, self._restarting = self._restarting or [], None
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    async def _restart(self) -> None:
        old = list(self._links.values())
        self._old.update(old)
        self._links = {}
        self._generation += 1
        log.info(
            "starting generation {generation} of the workers",
            generation=self._generation,
        )
        await gatherResults([self._spawn(slot) for slot in range(self.count)])
        timeout = self.pool.old_workers_timeout
        for link in old:
            link.stage = "old"
            await link.callRemote(Retire, timeout=timeout)
        log.info(
            "generation {generation} of the workers serves; the {count} old "
            "workers finish their connections (for {timeout} s at most)",
            generation=self._generation,
            count=len(old),
            timeout=timeout,
        )

    def worker_ended(self, link: WorkerLink, reason: Failure) -> None:
        """Forget a worker that has exited; replace it if it should not have."""
        link.stage = "ended"
        self._old.discard(link)
        if self._links.get(link.slot) is link:
            del self._links[link.slot]
        link.ended.callback(None)
        self.counts_changed()
        why = _why(reason)
        if self._stopping:
            log.info("{name} has stopped: {why}", name=link.name, why=why)
        elif link.generation != self._generation:
            log.info("old {name} has finished: {why}", name=link.name, why=why)
        else:
            young = self._reactor.seconds() - link.started < YOUNG
            delay = RESPAWN_DELAY_YOUNG if young else RESPAWN_DELAY
            self._restarts[link.slot] += 1
            log.warn(
                "{name} died ({why}); its connections are lost; another "
                "takes its place in {delay} s",
                name=link.name,
                why=why,
                delay=delay,
            )
            self._reactor.callLater(delay, self._replace, link.slot)

    def _replace(self, slot: int) -> None:
        if self._stopping or slot in self._links:
            return
        self._spawn(slot).addErrback(
            lambda f: log.failure("starting worker {worker} failed", f, worker=slot + 1)
        )

    async def _stop(self) -> None:
        self._stopping = True
        signal.signal(signal.SIGUSR2, self._previous_usr2)
        # New clients are refused from now on, as by one process; each
        # worker closes its own copies of the sockets as it stops.
        for port in self._listening.values():
            port.stopListening()
        links = self._all()
        for link in links:
            _signal(link, "TERM")
        ended = DeferredList([d for k in links for d in (k.ended, k.unlinked)])
        await self._within(
            ended.addCallback(lambda _: None), self.grace_period + CLOSE_TIMEOUT + 5
        )
        for link in self._all():
            _signal(link, "KILL")
        await super()._stop()


def _signal(link: WorkerLink, name: str) -> None:
    if link.process is not None:
        with suppress(ProcessExitedAlready):
            link.process.signalProcess(name)


def _why(reason: Failure) -> str:
    signal_number = getattr(reason.value, "signal", None)
    if signal_number is not None:
        return f"signal {signal.Signals(signal_number).name}"
    return f"exit status {getattr(reason.value, 'exitCode', '?')}"
