"""The health checks of a running pool: a monitor run on every server, forever."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ocsbal.health import CheckNotMadeError, IMonitor

if TYPE_CHECKING:
    from ocsbal._pool import Backend, RunningPool

log = Logger(namespace="ocsbal")


class HealthChecks(Service):
    """Check every server of a pool, forever, and keep its health.

    Each check's result is counted in the server's :class:`HealthState`
    (``passed``, ``failed``) as well as judged.

    Each server has its own :class:`LoopingCall`, started after a random
    part of the interval so that the servers are not all checked at the
    same moment.  A check that has not finished when the next is due delays
    it, so checks of one server never overlap.  Servers in maintenance are
    skipped; servers added at run time are :meth:`watched <watch>`, removed
    ones :meth:`unwatched <unwatch>`.

    :param servers: the pool whose servers to check.
    :param monitor: how to check one server.
    :param interval: seconds between two checks of one server.
    :param clock: schedules the checks.
    :param jitter: draws the start delay of each server's checks, a fraction
        of the interval in ``[0, 1)``.
    """

    def __init__(
        self,
        servers: RunningPool,
        monitor: IMonitor,
        interval: float,
        clock: IReactorTime,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.servers = servers
        self.monitor = monitor
        self.interval = interval
        self.clock = clock
        self.jitter = jitter
        self._loops: dict[Backend, LoopingCall] = {}
        self._starts: dict[Backend, IDelayedCall] = {}
        #: Each started loop's Deferred: it fires once the loop has stopped.
        self._stopped: dict[Backend, Deferred[LoopingCall]] = {}

    def startService(self) -> None:
        """Start checking every server."""
        super().startService()
        for backend in self.servers.backends.values():
            self.watch(backend, self.jitter() * self.interval)

    def stopService(self) -> Deferred[None]:
        """Stop checking; fires once no check is running."""
        super().stopService()
        stopped = DeferredList([self.unwatch(b) for b in list(self._loops)])
        return stopped.addCallback(lambda _: None)

    def watch(self, backend: Backend, delay: float = 0.0) -> None:
        """Check ``backend`` every interval from ``delay`` seconds on.

        While the service is stopped, this waits for :meth:`startService`.
        """
        if not self.running:
            return
        loop = LoopingCall(self._check, backend)
        loop.clock = self.clock
        self._loops[backend] = loop
        self._starts[backend] = self.clock.callLater(delay, self._start, backend)

    def unwatch(self, backend: Backend) -> Deferred[None]:
        """Stop checking ``backend``; fires once its check in progress ends."""
        start = self._starts.pop(backend, None)
        if start is not None and start.active():
            start.cancel()
        loop = self._loops.pop(backend, None)
        if loop is not None and loop.running:
            loop.stop()  # at once, or when the check in progress ends
        stopped = self._stopped.pop(backend, None)
        if stopped is None:
            return succeed(None)
        return stopped.addCallback(lambda _: None)

    def _start(self, backend: Backend) -> None:
        self._stopped[backend] = self._loops[backend].start(self.interval)

    def _check(self, backend: Backend) -> Deferred[None] | None:
        if not backend.monitored:
            return None
        d = self.monitor.check(backend.server)
        d.addCallbacks(
            lambda _: self._passed(backend),
            lambda f: self._failed(backend, f.value),
        )
        return d

    def _passed(self, backend: Backend) -> None:
        backend.health.passed += 1
        self.servers.record(backend, True)

    def _failed(self, backend: Backend, error: BaseException) -> None:
        if isinstance(error, CheckNotMadeError):
            log.warn(
                "server {server} not checked, its state stays: {reason}",
                server=backend.name,
                reason=error,
            )
            return
        backend.health.failed += 1
        self.servers.record(backend, False, str(error))
