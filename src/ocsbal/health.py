"""Health monitoring: which servers may be picked.

:class:`HealthState` is the pure rise/fall state machine of one server.
:class:`IMonitor` is what checks a server once (:mod:`ocsbal.monitors` has
the monitors).  :class:`HealthChecks` runs a monitor on every server of a
balancer on a :class:`~twisted.internet.task.LoopingCall`, feeding the
results to each server's state.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Interface

if TYPE_CHECKING:
    from ocsbal._model import Server
    from ocsbal._proxy import Backend, Balancer

__all__ = ["CheckNotMadeError", "HealthChecks", "HealthState", "IMonitor"]

log = Logger(namespace="ocsbal")


@attrs.define
class HealthState:
    """Whether a server is up, from the results of its checks.

    An up server goes down after ``fall`` failures in a row; a down server
    comes back after ``rise`` successes in a row.  A new server is up, so a
    pool serves at once; a first failed check takes it down as usual.

    :ivar up: whether the server may be picked.
    :ivar last: what the last check said: ``"ok"`` or why it failed.
    """

    rise: int
    fall: int
    up: bool = True
    last: str = "not checked yet"
    _streak: int = 0

    def record(self, ok: bool, reason: str = "ok") -> bool:
        """Count one check's result; return whether :attr:`up` changed."""
        self.last = reason
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < (self.rise if ok else self.fall):
            return False
        self.up = ok
        self._streak = 0
        return True

    def suspend(self, reason: str) -> None:
        """Take the server down at once, whatever its streak.

        ``rise`` successes in a row bring it back.
        """
        self.up = False
        self.last = reason
        self._streak = 0


class CheckNotMadeError(Exception):
    """A check could not be made from this host; it says nothing of the server.

    A monitor fails with it when, for example, the balancer is out of file
    descriptors: counting that against the server would take healthy
    servers down for the balancer's own trouble.
    """


class IMonitor(Interface):
    """Checks whether one server is healthy."""

    def check(server: Server) -> Deferred[None]:
        """Check ``server`` once.

        :return: a Deferred that fires with ``None`` when the server is
            healthy, or fails with an exception whose string says why not,
            or with :class:`CheckNotMadeError` when the check could not be
            made at all.  It fires within the monitor's timeout.
        """


class HealthChecks(Service):
    """Check every server of a balancer, forever, and keep its health.

    Each server has its own :class:`LoopingCall`, started after a random
    part of the interval so that the servers are not all checked at the
    same moment.  A check that has not finished when the next is due delays
    it, so checks of one server never overlap.  Servers in maintenance are
    skipped; servers added at run time are :meth:`watched <watch>`, removed
    ones :meth:`unwatched <unwatch>`.

    :param balancer: whose servers to check.
    :param monitor: how to check one server.
    :param interval: seconds between two checks of one server.
    :param clock: schedules the checks.
    :param jitter: draws the start delay of each server's checks, a fraction
        of the interval in ``[0, 1)``.
    """

    def __init__(
        self,
        balancer: Balancer,
        monitor: IMonitor,
        interval: float,
        clock: IReactorTime,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.balancer = balancer
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
        for backend in self.balancer.backends.values():
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
            lambda _: self.balancer.record(backend, True),
            lambda f: self._failed(backend, f.value),
        )
        return d

    def _failed(self, backend: Backend, error: BaseException) -> None:
        if isinstance(error, CheckNotMadeError):
            log.warn(
                "server {server} not checked, its state stays: {reason}",
                server=backend.name,
                reason=error,
            )
            return
        self.balancer.record(backend, False, str(error))
