"""The pure parts of several processes: the AMP JSON argument, how often
counts cross, adding figures up, and servers ranked by the host's counts."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.protocols import amp

from ocsbal._amp import JSON, Throttled
from ocsbal._pool import RunningPool
from ocsbal._report import add_figures
from ocsbal.config import Pool, Server
from ocsbal.tap import worker_count

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=50,
)


def through_a_box(value: object) -> tuple[object, list[bytes]]:
    """``value`` sent as a JSON argument: what arrives, and the box's values."""
    strings: dict[bytes, bytes] = {}
    JSON().toBox(b"value", strings, {"value": value}, amp.BinaryBoxProtocol(None))
    amp.AmpBox(strings).serialize()  # raises if a value is too long for AMP
    objects: dict[str, Any] = {}
    JSON().fromBox(b"value", strings, objects, amp.BinaryBoxProtocol(None))
    return objects["value"], list(strings.values())


@given(JSON_VALUES)
def test_any_json_value_arrives_as_sent(value: object) -> None:
    arrived, _ = through_a_box(value)
    assert arrived == value


def test_a_value_longer_than_amp_allows_is_split_over_keys() -> None:
    connections = [{"client": f"127.0.0.1:{n}", "age": n} for n in range(5000)]
    arrived, pieces = through_a_box(connections)
    assert arrived == connections
    assert len(pieces) > 1
    assert max(len(p) for p in pieces) <= amp.MAX_VALUE_LENGTH


def figures(active: int, sent: int, method_count: int, age: float) -> dict[str, Any]:
    return {
        "servers": {"fe1": {"active": active, "total": 1, "sent": sent, "received": 0}},
        "leaving": {},
        "ports": {"5060": {"active": active, "accepted": 1, "rejected": 0}},
        "sip": {
            "requests": {"REGISTER": method_count},
            "responses": {},
            "keepalives": {},
            "gave_up": {},
        },
        "connections": [{"age": age}],
    }


def test_counts_go_at_the_turns_end_and_a_burst_of_changes_goes_once_a_gap() -> None:
    clock, calls = Clock(), []
    soon = Throttled(clock, 0.01, lambda: calls.append(clock.seconds()))
    soon()
    clock.advance(0)
    assert calls == [0.0]  # the first change, at once
    for _ in range(50):  # a change every millisecond: one call every ten
        soon()
        clock.advance(0.001)
    assert calls == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.05])
    clock.advance(1)
    assert len(calls) == 6  # none asked for since
    soon()
    clock.advance(0)
    assert calls[-1] == pytest.approx(1.05)  # quiet for long: at once again


def test_figures_of_several_processes_add_up_as_one() -> None:
    total = add_figures([figures(2, 10, 1, 5.0), figures(3, 7, 4, 9.0), {}])
    assert total["servers"]["fe1"] == {
        "active": 5,
        "total": 2,
        "sent": 17,
        "received": 0,
    }
    assert total["ports"]["5060"] == {"active": 5, "accepted": 2, "rejected": 0}
    assert total["sip"]["requests"] == {"REGISTER": 5}
    # The connections of all, oldest first.
    assert [c["age"] for c in total["connections"]] == [9.0, 5.0]


def test_a_server_only_one_process_knows_is_counted_once() -> None:
    one = figures(1, 1, 1, 1.0)
    other = figures(1, 1, 1, 2.0)
    other["servers"] = {"fe2": {"active": 4, "total": 4, "sent": 0, "received": 0}}
    total = add_figures([one, other])
    assert set(total["servers"]) == {"fe1", "fe2"}
    assert total["servers"]["fe2"]["active"] == 4


def pool() -> Pool:
    return Pool(
        name="p",
        fqdn="p.example.com",
        vip="127.0.0.10",
        servers=[
            Server("fe1", "127.0.0.11", weight=1),
            Server("fe2", "127.0.0.12", weight=2),
        ],
    )


def test_the_scheduler_ranks_by_the_hosts_counts() -> None:
    """Connections held elsewhere weigh as those held here."""
    servers = RunningPool(pool(), Clock().seconds)
    servers.count_elsewhere({"fe2": 6}, {})
    # fe2 holds 6 / 2 = 3 a unit of weight, all elsewhere: fe1 (weight 1)
    # is picked until it holds as many, three.
    assert [servers.pick().name for _ in range(3)] == ["fe1"] * 3
    fe1, fe2 = servers.backend("fe1"), servers.backend("fe2")
    assert (fe1.here, fe1.active, fe2.here, fe2.active) == (3, 3, 0, 6)
    # Alone, the same process would have split them 1:2.
    alone = RunningPool(pool(), Clock().seconds)
    assert [alone.pick().name for _ in range(3)].count("fe2") == 2


def test_a_removed_server_is_forgotten_once_no_process_holds_its_connections() -> None:
    servers = RunningPool(pool(), Clock().seconds)
    fe1 = servers.backend("fe1")
    servers.count_elsewhere({"fe1": 1}, {})
    servers.reconfigure(
        Pool(
            name="p",
            fqdn="p.example.com",
            vip="127.0.0.10",
            servers=[Server("fe2", "127.0.0.12")],
        )
    )
    assert servers.leaving == {fe1}
    servers.count_elsewhere({}, {"fe1": 1})
    assert servers.leaving == {fe1}
    servers.count_elsewhere({}, {})
    assert servers.leaving == set()


def test_a_removed_server_keeps_the_connections_of_a_process_not_told_yet() -> None:
    """A worker reports fe1 as the pool's until it applies the removal:
    those connections are still the removed fe1's, not none."""
    servers = RunningPool(pool(), Clock().seconds)
    fe1 = servers.backend("fe1")
    servers.count_elsewhere({"fe1": 2}, {})
    only_fe2 = Pool(
        name="p",
        fqdn="p.example.com",
        vip="127.0.0.10",
        servers=[Server("fe2", "127.0.0.12")],
    )
    servers.reconfigure(only_fe2)
    servers.count_elsewhere({"fe1": 2, "fe2": 1}, {})  # not applied there yet
    assert (servers.leaving, fe1.active) == ({fe1}, 2)
    servers.count_elsewhere({"fe2": 1}, {"fe1": 1})  # applied, one closed
    assert (servers.leaving, fe1.active) == ({fe1}, 1)
    # The name back in the pool: what is counted as the pool's is the new one's.
    servers.reconfigure(pool())
    servers.count_elsewhere({"fe1": 5}, {"fe1": 1})
    assert (servers.backend("fe1").active, fe1.active) == (5, 1)
    servers.count_elsewhere({"fe1": 5}, {})
    assert servers.leaving == set()


def test_auto_is_one_worker_a_core_and_a_number_is_itself() -> None:
    assert worker_count(pool()) == len(os.sched_getaffinity(0))
    for count in (1, 3):
        fixed = Pool(
            name="p",
            fqdn="p.example.com",
            vip="127.0.0.10",
            servers=[Server("fe1", "127.0.0.11")],
            workers=count,
        )
        assert worker_count(fixed) == count
