"""Idle-timeout accounting, free of I/O.

A pool holds tens of thousands of mostly idle SIP connections.  Resetting a
reactor timer on every read would cost a heap operation per read, so each
connection only stamps the time of its last activity, and a coarse periodic
sweep closes those whose stamp is older than the timeout.  A connection is
therefore closed between ``timeout`` and ``timeout + sweep_interval`` seconds
after it went quiet.

A connection that carries a live SIP registration is the exception: it is
kept until the registration's expiry plus a grace, however long that is,
because an OCS client may stay quiet until it refreshes (:meth:`closing`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

import attrs

#: OCS 2007 R2 clients may stay silent this long on a live connection.
OCS_IDLE_TIMEOUT = 1800.0

#: The sweep runs at least this often, so the overshoot stays within 30 s of
#: the configured timeout even for an idle timeout of hours.
MAX_SWEEP_INTERVAL = 30.0

#: ...and never more often than this, so a tiny test timeout doesn't spin.
MIN_SWEEP_INTERVAL = 0.05

#: How finely the timeout is divided into sweeps: the overshoot is at most
#: 1/SWEEPS_PER_TIMEOUT of the timeout (when the bounds above allow).
SWEEPS_PER_TIMEOUT = 20


class Stamped(Protocol):
    """Anything that records when it last saw activity."""

    @property
    def last_activity(self) -> float:
        """Seconds (on the injected clock) of the last byte seen."""


_T = TypeVar("_T", bound=Stamped)


@attrs.frozen
class IdleTimeout:
    """Decide which connections have been idle too long.

    :param timeout: seconds without activity after which a connection is
        idle.
    """

    timeout: float = attrs.field(validator=attrs.validators.gt(0))

    @property
    def sweep_interval(self) -> float:
        """How often the sweep should run for this timeout."""
        return min(
            MAX_SWEEP_INTERVAL,
            max(MIN_SWEEP_INTERVAL, self.timeout / SWEEPS_PER_TIMEOUT),
        )

    def expired(self, connections: Iterable[_T], now: float) -> list[_T]:
        """Return the connections idle for at least :attr:`timeout` at ``now``.

        A list, not a generator: the caller closes them, which may remove
        them from the collection being iterated.
        """
        deadline = now - self.timeout
        return [c for c in connections if c.last_activity <= deadline]

    def closing(
        self,
        last_activity: float,
        expiry: float | None = None,
        grace: float = 0.0,
        reap: bool = False,
    ) -> tuple[float, str]:
        """When a connection is due to close if it stays as it is, and why then.

        :param last_activity: when the connection last saw traffic.
        :param expiry: when its last SIP registration expires, if it has one.
        :param grace: how long past ``expiry`` a registration may go without
            a refresh.
        :param reap: whether a registration not refreshed by then closes
            the connection, however active it is.
        :return: the time, and ``idle`` (:attr:`timeout` after the last
            activity), ``registration`` (``expiry + grace``, which comes
            later) or ``missed-refresh`` (``expiry + grace``, as ``reap``
            says).
        """
        idle = last_activity + self.timeout
        if expiry is None:
            return idle, "idle"
        end = expiry + grace
        if reap:
            return end, "missed-refresh"
        return (idle, "idle") if idle >= end else (end, "registration")


def too_short_for_ocs(pool: str, idle_timeout: float) -> str | None:
    """The warning for pool ``pool``, if ``idle_timeout`` cuts OCS clients off.

    ``ocsbal check`` prints it; the pool logs it when it starts and reloads.
    """
    if idle_timeout >= OCS_IDLE_TIMEOUT:
        return None
    return (
        f"pool {pool}: idle_timeout = {idle_timeout:g} s is below the "
        f"{OCS_IDLE_TIMEOUT:g} s OCS 2007 R2 requires; quiet clients will be cut off"
    )
