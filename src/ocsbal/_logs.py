"""Log lines that a client can repeat at will, rate-limited.

One looping client, refused because no server can take it, would otherwise
write a line per connection: ten of them wrote 34,329 lines in 40 s, and
twistd's log rotation keeps every file.  :class:`LimitedLog` writes the first
line of a kind at once, then counts the others for :data:`REPEAT_INTERVAL`
seconds and writes one line saying how many there were, with the fields of
the last; a kind quiet for a whole interval is written at once again.

A kind is a format string and what the caller says tells its lines apart
beyond the format (the server that failed, and why): never a client's
address, so that the kinds are few whatever the clients do.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

#: Seconds over which the repeats of a line are counted into one.
REPEAT_INTERVAL = 10.0

#: A kind of line: its level, format, and what tells it apart beyond them.
_Kind = tuple[LogLevel, str, object]


class _Repeats:
    """The lines of one kind held back in the current interval."""

    __slots__ = ("count", "fields", "summary")

    def __init__(self, summary: IDelayedCall) -> None:
        self.summary = summary
        self.count = 0
        self.fields: dict[str, Any] = {}


class LimitedLog:
    """Writes to ``log`` at most one line of a kind per interval, and counts.

    :param log: where the lines go.
    :param clock: times the intervals.
    :param interval: seconds over which repeats are counted.
    """

    def __init__(
        self, log: Logger, clock: IReactorTime, interval: float = REPEAT_INTERVAL
    ) -> None:
        self._log = log
        self._clock = clock
        self.interval = interval
        self._held: dict[_Kind, _Repeats] = {}

    def info(self, format: str, *, kind: object = None, **fields: Any) -> None:
        """Write, or count, an informational line."""
        self.emit(LogLevel.info, format, kind=kind, **fields)

    def warn(self, format: str, *, kind: object = None, **fields: Any) -> None:
        """Write, or count, a warning."""
        self.emit(LogLevel.warn, format, kind=kind, **fields)

    def emit(
        self, level: LogLevel, format: str, *, kind: object = None, **fields: Any
    ) -> None:
        """Write the line if none of its kind was written this interval.

        :param kind: what tells this line's kind apart from others of the
            same format; hashable, and of few values.
        """
        key = (level, format, kind)
        held = self._held.get(key)
        if held is None:
            self._log.emit(level, format, **fields)
            self._held[key] = _Repeats(self._later(key))
        else:
            held.count += 1
            held.fields = fields

    def flush(self) -> None:
        """Write the counts held now, as at the end of their intervals."""
        for key, held in list(self._held.items()):
            held.summary.cancel()
            self._summarize(key, again=False)

    def _later(self, key: _Kind) -> IDelayedCall:
        return self._clock.callLater(self.interval, self._summarize, key)

    def _summarize(self, key: _Kind, again: bool = True) -> None:
        held = self._held.pop(key)
        if not held.count:
            return  # a quiet interval: the next line is written at once
        level, format, _ = key
        self._log.emit(
            level,
            "{repeated_lines} more like this in the last {repeat_interval:g} s, "
            "the last: " + format,
            repeated_lines=held.count,
            repeat_interval=self.interval,
            **held.fields,
        )
        if again:  # still busy: count the next interval too
            self._held[key] = _Repeats(self._later(key))
