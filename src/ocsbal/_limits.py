"""What one client address may take: connections held and opened a second.

:class:`SourceLimits` keeps, per source (an IPv4 address, or the /64 of an
IPv6 one), the connections it holds and a token bucket of the connections
it may open, and says which limit, if any, a new connection breaks.  It
knows nothing of sockets; the relay asks it as it accepts.

Its table is bounded: a source holding connections is kept while it holds
them (there are no more of those than connections), and at most
:data:`IDLE_SOURCES` others, those whose bucket is still refilling, are
kept besides; past that the longest-known of them are forgotten, which only
ever lets a forgotten source open more.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ocsbal._sections import Limits

__all__ = [
    "IDLE_SOURCES",
    "PER_SOURCE_CONNECTIONS",
    "PER_SOURCE_RATE",
    "SourceLimits",
    "source_of",
]

#: The limits' names, in :attr:`ocsbal._relay.Relay.limited` and metrics.
PER_SOURCE_CONNECTIONS = "per_source_connections"
PER_SOURCE_RATE = "per_source_rate"

#: Sources without connections kept in the table at most.
IDLE_SOURCES = 65536


def source_of(host: str) -> str:
    """The source ``host`` counts as: itself, or its /64 if it is IPv6."""
    if ":" not in host:
        return host
    network = ipaddress.IPv6Network((host, 64), strict=False)
    return str(network.network_address)


class _Source:
    """One source's connections held, and its bucket of connections to open."""

    __slots__ = ("held", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.held = 0
        self.tokens = tokens
        self.stamp = stamp


class SourceLimits:
    """The ``[limits]`` of a pool, applied to its sources.

    :param limits: the limits; replaced on a reload.
    :param now: the clock.
    """

    def __init__(self, limits: Limits, now: Callable[[], float]) -> None:
        self.limits = limits
        self._now = now
        self._sources: dict[str, _Source] = {}
        #: The table's size at which sources are next forgotten.
        self._full_at = IDLE_SOURCES

    def __len__(self) -> int:
        return len(self._sources)

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source``, unless it breaks a limit.

        :return: ``None`` if it is admitted (and then counted until
            :meth:`release`), else the name of the limit it breaks.
        """
        limits, now = self.limits, self._now()
        rate = limits.per_source_rate
        entry = self._sources.get(source)
        if entry is None:
            if len(self._sources) >= self._full_at:
                self._forget(now)
            entry = self._sources[source] = _Source(float(rate), now)
        if (
            limits.per_source_connections
            and entry.held >= limits.per_source_connections
        ):
            return PER_SOURCE_CONNECTIONS
        if rate:
            tokens = min(float(rate), entry.tokens + (now - entry.stamp) * rate)
            entry.stamp = now
            if tokens < 1.0:
                entry.tokens = tokens
                return PER_SOURCE_RATE
            entry.tokens = tokens - 1.0
        entry.held += 1
        return None

    def release(self, source: str) -> None:
        """Count the end of a connection :meth:`admit` admitted from ``source``."""
        entry = self._sources.get(source)
        if entry is not None:
            entry.held -= 1

    def _forget(self, now: float) -> None:
        # First the sources whose bucket is full again: forgetting them
        # loses nothing.  If that is not enough, the oldest of the others.
        rate = self.limits.per_source_rate
        kept = {
            name: entry
            for name, entry in self._sources.items()
            if entry.held or (rate and entry.tokens + (now - entry.stamp) * rate < rate)
        }
        idle = [name for name, entry in kept.items() if not entry.held]
        for name in idle[: max(0, len(idle) - IDLE_SOURCES // 2)]:
            del kept[name]
        self._sources = kept
        # Sources holding connections are never forgotten: however many
        # there are, the next sweep waits for as many new ones again.
        self._full_at = len(kept) + IDLE_SOURCES // 2
