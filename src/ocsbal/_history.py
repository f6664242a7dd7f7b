"""What the admin interface remembers of the daemon's past.

:class:`History` knows when the daemon started and keeps the connections of
each server over the last hour: a bounded ring of samples, one every
:data:`INTERVAL` seconds, taken from the pool's counts (host-wide in a
control process, which holds every worker's).  The admin service takes the
samples; nothing is counted while relaying.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, cast

from ocsbal import __version__

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from ocsbal._pool import RunningPool

__all__ = ["INTERVAL", "SAMPLES", "History"]

#: Seconds between two samples.
INTERVAL = 30.0
#: Samples kept: an hour of them.
SAMPLES = 120


class History:
    """The daemon's start, and its servers' connections over the last hour.

    :param clock: tells the time of each sample, and of the start.
    :param interval: seconds between two samples, as its sampler takes them.
    :param samples: how many samples are kept; a new one pushes out the
        oldest.

    :ivar started: clock time the daemon started (this was made).
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = INTERVAL,
        samples: int = SAMPLES,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.started = clock.seconds()
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=samples)

    def sample(self, servers: RunningPool) -> None:
        """Keep the connections each server of ``servers`` has now.

        Servers being removed count under their name too, until they leave.
        """
        counts: dict[str, int] = {}
        for backend in [*servers.backends.values(), *servers.leaving]:
            counts[backend.name] = counts.get(backend.name, 0) + backend.active
        self._samples.append((self.clock.seconds(), counts))

    def report(self) -> dict[str, Any]:
        """The samples as JSON-ready data, for ``/api/history`` and the page.

        ``times`` says when each sample was taken, oldest first, and
        ``servers`` each server's connections then, in the same order:
        ``None`` where it was not in the pool.  ``now`` is the clock's time,
        ``window`` the seconds the samples kept at most span.
        """
        names = dict.fromkeys(name for _, counts in self._samples for name in counts)
        return {
            "now": round(self.clock.seconds(), 3),
            "interval": self.interval,
            "window": self.interval * cast(int, self._samples.maxlen),
            "times": [round(at, 3) for at, _ in self._samples],
            "servers": {
                name: [counts.get(name) for _, counts in self._samples]
                for name in names
            },
        }

    def about(self) -> dict[str, Any]:
        """The daemon itself: its version, when it started, for how long."""
        return {
            "version": __version__,
            "started": round(self.started, 3),
            "uptime": round(self.clock.seconds() - self.started, 3),
        }
