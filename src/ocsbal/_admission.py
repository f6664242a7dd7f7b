"""How many new connections a process sets up at once.

When every client of a pool reconnects at once (after a failover, or a
network blip), each process would take in its whole accept queue and set
all those connections up together, every one slowed by all the others:
with 30,000 clients through four workers, each REGISTER then waited longer
than the clients' timeout, every client gave up and tried again, and the
work done for them was lost, round after round, and the pool did not come
back.  So a process connects at most :data:`AT_ONCE` clients to servers at
a time: at that many its VIP ports stop accepting, and they accept again
once half are done.  The rest wait in the kernel's accept queue, in order,
and are set up in turns, each turn quickly, so those first in are served
first and in time.

Connecting to a server on the same network takes well under a millisecond,
so in ordinary traffic a few are ever connecting at once.  Only a server
that does not answer at all (a firewall dropping its SYNs) keeps clients
connecting for as long as ``connect_timeout``; under round robin, enough
of them stop new connections for that long, until their failures mark the
server down.  Least connections sends new clients elsewhere first, as it
counts those being connected.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["AT_ONCE", "Admission"]

#: Clients a process connects to servers at once, at most.  Measured with
#: 30,000 clients reconnecting through four workers on two cores, each
#: client giving up after 3 s (bench/pool_scale.py): with 64, all were
#: registered again in 10.5, 12.4 and 12.7 s (three runs); with no limit,
#: in 13.3 and 37.8 s, and in the third not all within 60 s.  (Two runs of
#: 64 before those: 26.4 s, and not within 60 s on a loaded machine.)  50
#: and 200 did as 64; 1,000 as no limit.
AT_ONCE = 64


class Admission:
    """Counts the clients being connected to servers; pauses accepting at a limit.

    :param pause: told ``True`` when the VIP ports should stop accepting,
        and ``False`` when they may accept again.
    :param most: how many clients may be connecting at once.

    :ivar connecting: clients being connected to a server now.
    :ivar paused: whether the ports were told to stop accepting.
    :ivar pauses: how many times they were.
    """

    def __init__(self, pause: Callable[[bool], None], most: int = AT_ONCE) -> None:
        self._pause = pause
        self._most = most
        self.connecting = 0
        self.paused = False
        self.pauses = 0

    def began(self) -> None:
        """A client started connecting to a server."""
        self.connecting += 1
        if self.connecting >= self._most and not self.paused:
            self.paused = True
            self.pauses += 1
            self._pause(True)

    def ended(self) -> None:
        """A client stopped connecting: it is relayed, refused or gone."""
        self.connecting -= 1
        if self.paused and self.connecting <= self._most // 2:
            self.paused = False
            self._pause(False)
