"""What one client address may take (ocsbal._limits), and where server
connections come from (ocsbal._outbound.Sources)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from ocsbal import _limits
from ocsbal._limits import (
    PER_SOURCE_CONNECTIONS,
    PER_SOURCE_RATE,
    SourceLimits,
    source_of,
)
from ocsbal._outbound import REST, Sources
from ocsbal._sections import Limits


def test_a_source_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2::99")
    assert source_of("2001:db8:1:2::1") != source_of("2001:db8:1:3::1")


def test_connections_held_are_limited_and_released() -> None:
    table = SourceLimits(Limits(per_source_connections=2), Clock().seconds)
    assert [table.admit("192.0.2.7") for _ in range(3)] == [
        None,
        None,
        PER_SOURCE_CONNECTIONS,
    ]
    assert table.admit("192.0.2.8") is None  # another source has its own
    table.release("192.0.2.7")
    assert table.admit("192.0.2.7") is None


def test_the_rate_allows_a_burst_then_one_a_second_per_unit() -> None:
    clock = Clock()
    table = SourceLimits(Limits(per_source_rate=3), clock.seconds)
    assert [table.admit("192.0.2.7") for _ in range(4)] == [None] * 3 + [
        PER_SOURCE_RATE
    ]
    clock.advance(1 / 3)
    assert table.admit("192.0.2.7") is None
    assert table.admit("192.0.2.7") == PER_SOURCE_RATE
    clock.advance(10)  # the bucket refills to its size, no more
    assert [table.admit("192.0.2.7") for _ in range(4)].count(None) == 3


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 2)), max_size=60))
def test_no_sequence_lets_a_source_past_its_limits(
    steps: list[tuple[bool, float]],
) -> None:
    """Over any second, at most rate + rate admitted; never more held than allowed."""
    clock = Clock()
    table = SourceLimits(
        Limits(per_source_connections=4, per_source_rate=2), clock.seconds
    )
    held = 0
    admitted_at: list[float] = []
    for close, wait in steps:
        clock.advance(wait)
        if close and held:
            table.release("198.51.100.1")
            held -= 1
        elif table.admit("198.51.100.1") is None:
            held += 1
            admitted_at.append(clock.seconds())
        assert held <= 4
    for t in admitted_at:
        assert sum(t <= u < t + 1 for u in admitted_at) <= 4  # burst 2 + 2 a second


def test_the_table_of_sources_without_connections_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_limits, "IDLE_SOURCES", 100)
    clock = Clock()
    table = SourceLimits(Limits(per_source_rate=1), clock.seconds)
    holding = [f"10.0.0.{i}" for i in range(10)]
    for source in holding:
        assert table.admit(source) is None
    for i in range(1000):  # each opens one connection, closed at once
        source = f"10.1.{i // 250}.{i % 250}"
        assert table.admit(source) is None
        table.release(source)
        assert len(table) <= len(holding) + 100
    # Those holding connections were kept, and still count.
    assert all(table.admit(s) == PER_SOURCE_RATE for s in holding)


def test_the_sources_are_taken_in_turn() -> None:
    sources = Sources(Clock().seconds)
    firsts = [sources.order(["10.0.0.1", "10.0.0.2"], "fe1", 5061)[0] for _ in range(4)]
    assert firsts == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    assert sources.order(["10.0.0.1", "10.0.0.2"], "fe1", 5061) == [
        "10.0.0.1",
        "10.0.0.2",
    ]


def test_a_source_out_of_ports_rests_for_that_server_port_only() -> None:
    clock = Clock()
    sources = Sources(clock.seconds)
    sources.out_of_ports("10.0.0.1", "fe1", 5061)
    for _ in range(3):
        assert sources.order(["10.0.0.1", "10.0.0.2"], "fe1", 5061) == ["10.0.0.2"]
    assert "10.0.0.1" in sources.order(["10.0.0.1", "10.0.0.2"], "fe1", 5060)
    clock.advance(REST)
    assert "10.0.0.1" in sources.order(["10.0.0.1", "10.0.0.2"], "fe1", 5061)
