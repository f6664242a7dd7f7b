"""What the control process and its workers say to each other, over AMP.

Each worker is spawned with one end of a Unix socket pair; Twisted's AMP
runs over it.  The control process owns the pool (its configuration, the
servers' admin state and health) and the VIP's sockets; a worker relays the
connections of the sockets it was handed, and reports what it counts.

Control to worker:

- :class:`BecomeUser` gives a worker the control process's identity;
- :class:`AdoptPort` hands over a listening socket (``SCM_RIGHTS``);
- :class:`Configure` sets the whole pool: its configuration as the INI
  text :func:`ocsbal.config.render` writes, and each server's admin state
  and health; the answer says it is in force;
- :class:`Health` says a server went up or down, as soon as it does;
- :class:`Elsewhere` gives each server's connections in the other
  processes, so that every worker ranks the servers by the host's counts;
- :class:`Figures` asks for what the worker counts (``/api``, ``/metrics``);
- :class:`Retire` tells an old worker to stop accepting and to leave once
  its connections have closed.

Worker to control: :class:`Counts` (its connections per server, on each
change), :class:`ConnectFailed` (a server refused a connection: a failed
check) and :class:`Log` (its log events, which the control process writes).

Counts cross each way at most once a :data:`COUNTS_GAP` (:class:`Throttled`):
one change is passed on at the end of its reactor turn, but a burst of them,
as when every client reconnects at once, is passed on as one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.protocols import amp

__all__ = [
    "COUNTS_GAP",
    "JSON",
    "AdoptPort",
    "Configure",
    "ConnectFailed",
    "Counts",
    "Elsewhere",
    "Figures",
    "Health",
    "Log",
    "Retire",
    "Throttled",
]

#: Seconds at least between two messages of counts, each way.  With every
#: change its own message, the control process answered each new connection
#: with one to every worker: 12,000 clients connecting at 1,000 a second
#: through four workers cost 19.8 s of CPU, 15.5 s with this gap.  A gap of
#: 10 ms saved a little more (13.5-14.0 s), but four workers' weighted least
#: connections then drifted past 3 of 120 connections from their shares:
#: each worker's own counts are exact, the others' as old as the gap.
COUNTS_GAP = 0.003


class JSON(amp.Argument):
    """Any JSON value, however long: AMP values hold at most 65,535 bytes.

    The encoded text is split over as many keys as it needs, ``name``,
    ``name.1``, ``name.2``..., so that the connections of a worker holding
    thousands fit in one answer.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.BinaryBoxProtocol,  # noqa: ARG002
    ) -> None:
        """Put ``objects[name]`` into ``strings`` as JSON, in pieces."""
        data = json.dumps(objects[name.decode()], separators=(",", ":")).encode()
        step = amp.MAX_VALUE_LENGTH
        pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
        strings[name] = pieces[0]
        for i, piece in enumerate(pieces[1:], 1):
            strings[name + b".%d" % i] = piece

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, bytes],
        objects: dict[str, Any],
        proto: amp.BinaryBoxProtocol,  # noqa: ARG002
    ) -> None:
        """Read the JSON under ``name`` and its pieces into ``objects``."""
        pieces, i = [strings[name]], 1
        while name + b".%d" % i in strings:
            pieces.append(strings[name + b".%d" % i])
            i += 1
        objects[name.decode()] = json.loads(b"".join(pieces))


class BecomeUser(amp.Command):
    """Run as this user, group and supplementary groups, once configured.

    The control process's own, once ``twistd --uid`` has switched it: a
    worker spawned as root switches after its first :class:`Configure` has
    read the pool's files, before it accepts; one spawned as the user
    already is it.
    """

    arguments = [
        (b"uid", amp.Integer()),
        (b"gid", amp.Integer()),
        (b"groups", amp.ListOf(amp.Integer())),
    ]


class AdoptPort(amp.Command):
    """Take this listening socket for VIP port ``number``."""

    arguments = [(b"number", amp.Integer()), (b"socket", amp.Descriptor())]


class Configure(amp.Command):
    """Make this the pool: its INI text and its servers' state and health.

    ``servers`` maps each name to ``{"state": "ready", "up": true}``;
    ``close`` names removed servers whose connections close now.
    """

    arguments = [(b"pool", JSON()), (b"servers", JSON()), (b"close", JSON())]


class Health(amp.Command):
    """Server ``server`` is up, or down, from now on."""

    arguments = [(b"server", amp.Unicode()), (b"up", amp.Boolean())]
    requiresAnswer = False


class Elsewhere(amp.Command):
    """The connections the other processes hold, per server.

    ``counts`` is ``{"servers": {NAME: N}, "leaving": {NAME: N}}``, as
    :class:`Counts` reports them.
    """

    arguments = [(b"counts", JSON())]
    requiresAnswer = False


class Figures(amp.Command):
    """What the worker counts: :func:`ocsbal._report.figures`."""

    arguments = [(b"connections", amp.Boolean())]
    response = [(b"figures", JSON())]


class Retire(amp.Command):
    """Stop accepting; close what is left after ``timeout`` seconds; exit."""

    arguments = [(b"timeout", amp.Float())]


class MoveQuiet(amp.Command):
    """Close up to ``most`` of a server's quiet connections; how many it did."""

    arguments = [(b"server", amp.Unicode()), (b"most", amp.Integer())]
    response = [(b"closed", amp.Integer())]


class Counts(amp.Command):
    """The worker's connections per server, open or being opened."""

    arguments = [(b"counts", JSON())]
    requiresAnswer = False


class ConnectFailed(amp.Command):
    """A connection to the server at ``address`` failed: count a failed check."""

    arguments = [
        (b"server", amp.Unicode()),
        (b"address", amp.Unicode()),
        (b"reason", amp.Unicode()),
    ]
    requiresAnswer = False


class Log(amp.Command):
    """One of the worker's log events, as text, in its namespace, at its level.

    A connection's event (:mod:`ocsbal._connlog`) comes with its ``fields``,
    for the observers that write them.
    """

    arguments = [
        (b"namespace", amp.Unicode()),
        (b"level", amp.Unicode()),
        (b"text", amp.Unicode()),
        (b"fields", JSON(optional=True)),
    ]
    requiresAnswer = False


class Throttled:
    """Calls ``call`` when asked, at the end of the turn, but once a ``gap`` at most.

    Asked again before it has called, it calls once.

    :param clock: what schedules the call.
    :param gap: seconds at least between the start of two calls.
    :param call: what to call.
    """

    def __init__(
        self, clock: IReactorTime, gap: float, call: Callable[[], None]
    ) -> None:
        self._clock = clock
        self._gap = gap
        self._call = call
        self._due = False
        self._last = float("-inf")

    def __call__(self) -> None:
        if self._due:
            return
        self._due = True
        wait = self._last + self._gap - self._clock.seconds()
        self._clock.callLater(max(wait, 0.0), self._run)

    def _run(self) -> None:
        self._due = False
        self._last = self._clock.seconds()
        self._call()
