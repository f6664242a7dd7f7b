"""Health: which servers may be picked.

:class:`HealthState` is the pure rise/fall state machine of one server.  Its
thresholds are read from the pool's ``[monitor]`` with each result, so a
reload changes them for every server at once.  :func:`judge` counts one
result for a server and logs a change of state, once, with its reason.
:class:`IMonitor` is what checks a server once (:mod:`ocsbal.monitors` has
the monitors; :class:`ocsbal._checks.HealthChecks` runs them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface

if TYPE_CHECKING:
    from ocsbal._model import Monitor, Server

__all__ = ["CheckNotMadeError", "HealthState", "IMonitor", "judge"]

log = Logger(namespace="ocsbal")


@attrs.define
class HealthState:
    """Whether a server is up, from the results of its checks.

    An up server goes down after ``fall`` failures in a row; a down server
    comes back after ``rise`` successes in a row.  A server of the pool as it
    starts is up, so a pool serves at once; a first failed check takes it
    down as usual.

    :ivar up: whether the server may be picked.
    :ivar last: what the last check said: ``"ok"`` or why it failed.
    :ivar since: clock time :attr:`up` last changed, or the state was made;
        its owner, which has the clock, sets it (see
        :meth:`ocsbal._pool.RunningPool.record`).
    :ivar passed: health checks of the server that passed, for ``/metrics``;
        the runner counts them (a failed connection is no check).
    :ivar failed: health checks of the server that failed; one that could
        not be made (:class:`CheckNotMadeError`) counts neither way.
    """

    up: bool = True
    last: str = "not checked yet"
    _streak: int = 0
    since: float = 0.0
    passed: int = 0
    failed: int = 0

    @property
    def streak(self) -> int:
        """Checks in a row, up to now, whose result went against :attr:`up`.

        While down, the successes so far (``rise`` of them bring it up);
        while up, the failures (``fall`` take it down); 0 when the last
        result agreed, or since :meth:`suspend`.
        """
        return self._streak

    def record(self, ok: bool, monitor: Monitor, reason: str = "ok") -> bool:
        """Count one check's result; return whether :attr:`up` changed.

        :param monitor: the ``[monitor]`` in force: its ``rise`` and ``fall``.
        """
        self.last = reason
        if ok == self.up:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < (monitor.rise if ok else monitor.fall):
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


def judge(
    health: HealthState,
    server: Server,
    monitor: Monitor,
    ok: bool,
    reason: str = "ok",
) -> None:
    """Count a check's result, or a failed connection, for ``server``.

    A change of state is logged once, with its reason.
    """
    if not health.record(ok, monitor, reason):
        return
    if ok:
        log.info(
            "server {server} ({address}) is up: {rise} checks in a row passed",
            server=server.name,
            address=server.address,
            rise=monitor.rise,
        )
    else:
        log.warn(
            "server {server} ({address}) is down: {reason}",
            server=server.name,
            address=server.address,
            reason=reason,
        )


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
