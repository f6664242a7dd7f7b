"""The operator's changes, kept across reloads and restarts (ocsbal._overrides,
ocsbal._statefile, and PoolService's use of them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher

from ocsbal._overrides import Overrides
from ocsbal._pool import AdminState
from ocsbal._sections import Admin
from ocsbal.config import Port, Server
from ocsbal.service import PoolService
from pools import make_pool

FILE = make_pool(ports=[Port(5060)])


def test_changes_lie_over_the_file() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe1", weight=50)
    overrides.change(FILE, "fe2", state="drain")
    overrides.change(FILE, "fe3", added={"address": "127.0.1.13", "weight": 7})
    pool, states = overrides.apply(FILE)
    assert [(s.name, s.weight) for s in pool.servers] == [
        ("fe1", 50),
        ("fe2", 100),
        ("fe3", 7),
    ]
    assert states == {"fe2": "drain"}
    assert overrides.differences(FILE, "fe1") == {
        "weight": {"running": 50, "file": 100}
    }
    assert overrides.differences(FILE, "fe3") == {"added": True}


def test_a_value_the_file_has_is_no_override() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe1", weight=50)
    overrides.change(FILE, "fe1", weight=100)
    overrides.change(FILE, "fe2", state="drain")
    overrides.change(FILE, "fe2", state="ready")
    assert overrides.servers == {}


def test_removing_undoes_an_addition_and_hides_a_files_server() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe3", added={"address": "127.0.1.13", "weight": 7})
    overrides.change(FILE, "fe3", removed=True)
    overrides.change(FILE, "fe1", weight=5)
    overrides.change(FILE, "fe1", removed=True)
    assert overrides.servers == {"fe1": {"removed": True}}
    assert [s.name for s in overrides.apply(FILE)[0].servers] == ["fe2"]
    assert overrides.differences(FILE, "fe1") == {"removed": True}


def test_a_reload_says_what_the_operator_overrode_and_drops_what_agrees() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe1", weight=50)
    overrides.change(FILE, "fe2", weight=30)
    overrides.change(FILE, "fe3", added={"address": "127.0.1.13", "weight": 7})
    new = attrs.evolve(
        FILE,
        servers=[
            Server("fe1", "127.0.1.11", weight=80),  # changed: the operator's stays
            Server("fe2", "127.0.1.12", weight=30),  # now agrees: dropped
            Server("fe3", "127.0.1.13"),  # now in the file too
        ],
    )
    said = list(overrides.reconcile(FILE, new))
    assert said == [
        "server fe1: the file's weight changed to 80; the operator's 50 stays "
        "(ocsbal ctl forget fe1 takes the file's)",
        "server fe3: the file now has it at 127.0.1.13; the one the operator "
        "added at 127.0.1.13 stays",
    ]
    assert set(overrides.servers) == {"fe1", "fe3"}
    assert [(s.name, s.weight) for s in overrides.apply(new)[0].servers] == [
        ("fe1", 50),
        ("fe2", 30),
        ("fe3", 100),
    ]


def test_forget_one_or_all() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe1", weight=50)
    overrides.change(FILE, "fe2", state="maint")
    assert overrides.forget("fe9") == []
    assert overrides.forget("fe1") == ["fe1"]
    assert overrides.forget() == ["fe2"]
    assert overrides.servers == {}


def test_json_round_trip_and_a_bad_file_is_refused() -> None:
    overrides = Overrides()
    overrides.change(FILE, "fe1", weight=50, state="drain")
    data = json.loads(json.dumps(overrides.to_json()))
    assert Overrides.from_json(data) == overrides
    for bad in [{}, {"version": 2, "servers": {}}, {"version": 1, "servers": []}]:
        with pytest.raises(ValueError, match="not an ocsbal state file"):
            Overrides.from_json(bad)
    with pytest.raises(ValueError, match="'fe1': not an override"):
        Overrides.from_json({"version": 1, "servers": {"fe1": {"colour": 1}}})


def service(state_file: Path, pool: Any = FILE) -> PoolService:
    admin = Admin(listen="tcp:0:interface=127.0.0.1", state_file=str(state_file))
    return PoolService(attrs.evolve(pool, admin=admin), MemoryReactorClock())


def test_a_reload_and_a_restart_undo_none_of_the_operators_changes(
    tmp_path: Path,
) -> None:
    state = tmp_path / "pool.state"
    running = service(state)
    running.set_state("fe1", AdminState.DRAIN)
    running.reweight("fe2", 7)
    running.add_server(Server("fe3", "127.0.1.13"))
    configured = running.configured
    running.reload(configured)  # SIGHUP, the file unchanged
    assert running.servers.backend("fe1").state is AdminState.DRAIN
    assert running.servers.backend("fe2").server.weight == 7
    assert "fe3" in running.servers.backends
    again = service(state)  # a restart
    assert again.servers.backend("fe1").state is AdminState.DRAIN
    assert [(s.name, s.weight) for s in again.pool.servers] == [
        ("fe1", 100),
        ("fe2", 7),
        ("fe3", 100),
    ]
    assert again.overridden("fe2") == {"weight": {"running": 7, "file": 100}}


def test_forgetting_takes_the_files_values_at_once(tmp_path: Path) -> None:
    running = service(tmp_path / "pool.state")
    running.set_state("fe1", AdminState.MAINT)
    running.reweight("fe2", 7)
    names: list[list[str]] = []
    running.forget().addCallback(names.append)
    assert names == [["fe1", "fe2"]]
    assert running.servers.backend("fe1").state is AdminState.READY
    assert running.servers.backend("fe2").server.weight == 100
    assert json.loads((tmp_path / "pool.state").read_text())["servers"] == {}


def test_a_reload_changing_an_overridden_value_says_who_wins(tmp_path: Path) -> None:
    running = service(tmp_path / "pool.state")
    running.reweight("fe1", 50)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        file = running.configured
        changed = [attrs.evolve(file.servers[0], weight=80), file.servers[1]]
        running.reload(attrs.evolve(file, servers=changed))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (
        "server fe1: the file's weight changed to 80; the operator's 50 stays "
        "(ocsbal ctl forget fe1 takes the file's)"
    ) in [formatEvent(e) for e in events]
    assert running.servers.backend("fe1").server.weight == 50


def test_an_unreadable_state_file_is_said_and_ignored(tmp_path: Path) -> None:
    state = tmp_path / "pool.state"
    state.write_text("{not json")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        running = service(state)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert running.overrides.servers == {}
    assert any(formatEvent(e).startswith(f"state file {state} ignored") for e in events)


def test_a_state_file_that_cannot_be_written_is_said_and_the_change_holds(
    tmp_path: Path,
) -> None:
    running = service(tmp_path / "missing-directory" / "pool.state")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        running.reweight("fe1", 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert running.servers.backend("fe1").server.weight == 3
    assert any("not written" in formatEvent(e) for e in events)
