"""Rate-limited log lines, on a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from ocsbal._logs import LimitedLog


def limited(interval: float = 10) -> tuple[LimitedLog, Clock, list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(f"{event['log_level'].name}: {formatEvent(event)}")

    clock = Clock()
    return LimitedLog(Logger(observer=observe), clock, interval), clock, lines


def test_a_storm_of_one_line_is_one_line_then_one_count_an_interval() -> None:
    """Issue 11: ten looping clients wrote 34,329 refusals in 40 s."""
    log, clock, lines = limited()
    for n in range(34_329):  # over 40 s
        clock.advance(40 / 34_329)
        log.warn("rejected connection from {peer}: {reason}", peer=n, reason="down")
    clock.advance(10)
    assert len(lines) == 5
    assert lines[0] == "warn: rejected connection from 0: down"
    counts = [int(line.split()[1]) for line in lines[1:]]
    assert sum(counts) == 34_328
    assert lines[-1] == (
        f"warn: {counts[-1]} more like this in the last 10 s, the last: "
        "rejected connection from 34328: down"
    )


def test_kinds_are_counted_apart_and_a_quiet_kind_is_written_at_once() -> None:
    log, clock, lines = limited()
    log.warn("a {n}", n=1)
    log.info("b {n}", n=1)
    log.warn("a {n}", n=2)
    clock.advance(10)
    assert lines == [
        "warn: a 1",
        "info: b 1",
        "warn: 1 more like this in the last 10 s, the last: a 2",
    ]
    clock.advance(10)  # a quiet interval for both
    log.warn("a {n}", n=3)
    assert lines[-1] == "warn: a 3"


def test_flush_writes_the_counts_held() -> None:
    log, clock, lines = limited()
    log.info("x {n}", n=1)
    log.info("x {n}", n=2)
    log.flush()
    assert lines == [
        "info: x 1",
        "info: 1 more like this in the last 10 s, the last: x 2",
    ]
    assert clock.getDelayedCalls() == []
    log.info("x {n}", n=3)
    assert lines[-1] == "info: x 3"


def test_what_the_caller_names_tells_kinds_of_one_format_apart() -> None:
    log, clock, lines = limited()
    for server in ("fe1", "fe2", "fe1", "fe2"):
        log.warn("{server} failed", kind=server, server=server)
    assert lines == ["warn: fe1 failed", "warn: fe2 failed"]
    clock.advance(10)
    assert sorted(lines[2:]) == [
        "warn: 1 more like this in the last 10 s, the last: fe1 failed",
        "warn: 1 more like this in the last 10 s, the last: fe2 failed",
    ]
