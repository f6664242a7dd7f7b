"""One log event per connection as it closes ([log] connections = yes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from ocsbal._connlog import CAUSES, FIELDS, NAMESPACE
from ocsbal._control import WorkerLink
from ocsbal._sections import Limits, LogSettings
from ocsbal._sides import Side
from ocsbal._sweep import sweep
from ocsbal.config import Server
from ocsbal.jsonlog import stdout
from test_relay import Harness, registered
from test_relay_limits import arrive

ON = LogSettings(connections=True)


@contextmanager
def connection_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == NAMESPACE:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observe)


def one(run: Callable[[], object]) -> dict[str, Any]:
    """The one connection event ``run`` makes on a harness of its own."""
    with connection_events() as events:
        run()
    assert len(events) == 1, [formatEvent(e) for e in events]
    return events[0]


def test_a_relayed_connection_is_one_line_with_every_field() -> None:
    h = Harness(log=ON)

    def run() -> None:
        client, _ = h.accept(40000)
        h.reactor.advance(0.25)
        server, _ = h.succeed()
        client.dataReceived(b"x" * 10)
        server.dataReceived(b"y" * 20)
        h.reactor.advance(60)
        client.connectionLost(Failure(ConnectionDone()))
        server.connectionLost(Failure(ConnectionDone()))

    event = one(run)
    assert formatEvent(event) == (
        "client=127.0.0.1:40000 vip_port=5060 server=fe0 connect_ms=250.0 "
        "duration_s=60.25 up=10 down=20 cause=client-closed"
    )
    assert {key: event[key] for key in FIELDS} == {
        "client": "127.0.0.1:40000",
        "vip_port": 5060,
        "server": "fe0",
        "connect_ms": 250.0,
        "duration_s": 60.25,
        "up": 10,
        "down": 20,
        "cause": "client-closed",
        "aors": [],
    }
    assert event["log_level"] == LogLevel.info


def test_it_is_off_by_default() -> None:
    h = Harness()
    with connection_events() as events:
        client, _ = h.accept()
        client.connectionLost(Failure(ConnectionDone()))
    assert events == []


def test_a_server_that_closes_first() -> None:
    h = Harness(log=ON)

    def run() -> None:
        client, _ = h.accept()
        server, _ = h.succeed()
        server.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))

    assert one(run)["cause"] == "server-closed"


def test_an_idle_connection_and_a_registration_that_expired() -> None:
    h = Harness(log=ON, idle_timeout=60)

    def idle() -> None:
        client, _ = h.accept()
        server, _ = h.succeed()
        h.reactor.advance(61)
        sweep(h.relay)
        client.connectionLost(Failure(ConnectionDone()))
        server.connectionLost(Failure(ConnectionDone()))

    assert one(idle)["cause"] == "idle-timeout"
    h = Harness(log=ON, idle_timeout=3600, registration_grace=120, reap_expired=True)

    def expired() -> None:
        client, _ = registered(h)
        [splice] = h.relay.splices
        h.reactor.advance(1021)
        sweep(h.relay)
        client.connectionLost(Failure(ConnectionDone()))
        cast(Side, splice.server).connectionLost(Failure(ConnectionDone()))

    event = one(expired)
    assert event["cause"] == "registration-expired"
    assert event["aors"] == ["sip:alice@contoso.com"]
    assert formatEvent(event).endswith(
        " cause=registration-expired aor=sip:alice@contoso.com"
    )


def test_no_server_and_limits() -> None:
    h = Harness(log=ON, servers=1, retries=0)
    h.servers.record(h.servers.backend("fe0"), False, "refused")
    h.servers.record(h.servers.backend("fe0"), False, "refused")

    def nothing_up() -> None:
        client, _ = h.accept()
        client.connectionLost(Failure(ConnectionDone()))

    event = one(nothing_up)
    assert (event["cause"], event["server"], event["connect_ms"]) == (
        "no-server",
        "-",
        "-",
    )
    h = Harness(log=ON, servers=1)
    h.servers.backend("fe0").server = Server("fe0", "127.0.1.11", maxconn=1)
    h.accept()

    def full() -> None:
        client, _ = h.accept(40001)
        client.connectionLost(Failure(ConnectionDone()))

    assert one(full)["cause"] == "limit"
    h = Harness(log=ON, limits=Limits(per_source_connections=1))
    arrive(h, "192.0.2.7", 40000)
    event = one(lambda: arrive(h, "192.0.2.7", 40001))
    assert (event["cause"], event["client"]) == ("limit", "192.0.2.7:40001")


@pytest.mark.parametrize("retries", [0, 2])
def test_server_down_with_retries_left_or_not(retries: int) -> None:
    """The one server failed: with retries left there is no other to try."""
    h = Harness(log=ON, servers=1, retries=retries)

    def refused() -> None:
        client, _ = h.accept()
        h.refuse()
        client.connectionLost(Failure(ConnectionDone()))

    assert one(refused)["cause"] == "server-down"


@pytest.mark.parametrize("cause", ["admin", "shutdown"])
def test_closed_by_the_operator_or_a_stop(cause: str) -> None:
    h = Harness(log=ON)

    def run() -> None:
        client, _ = h.accept()
        server, _ = h.succeed()
        [splice] = h.relay.splices
        splice.close(cause)
        server.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))

    assert one(run)["cause"] == cause


def test_every_cause_is_documented() -> None:
    """The set the docs list is the set the code names."""
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    for cause in CAUSES:
        assert f"`{cause}`" in docs, cause


def test_a_workers_connection_event_keeps_its_fields_in_the_control() -> None:
    link = WorkerLink.__new__(WorkerLink)
    link.slot = 1
    fields = dict.fromkeys(FIELDS, 1) | {"cause": "client-closed", "aor": ""}
    with connection_events() as events:
        link.logged(NAMESPACE, "info", "ignored: the fields say it", fields)
    [event] = events
    assert (event["worker"], event["cause"], event["up"]) == (2, "client-closed", 1)
    assert formatEvent(event).startswith("client=1 vip_port=1 server=1")


def test_json_lines_carry_a_connections_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    observer = stdout()
    h = Harness(log=ON)
    globalLogPublisher.addObserver(observer)
    try:
        client, _ = h.accept(40000)
        client.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    [event] = [e for e in lines if e.get("log_namespace") == NAMESPACE]
    assert (event["client"], event["cause"], event["server"]) == (
        "127.0.0.1:40000",
        "client-closed",
        "-",
    )


def test_the_side_that_half_closes_first_is_the_cause() -> None:
    """A client's FIN passes to the server, which then closes first: still
    the client ended it."""
    h = Harness(log=ON)

    def run() -> None:
        client, _ = h.accept()
        server, server_t = h.succeed()
        half_closed: list[bool] = []
        server_t.loseWriteConnection = lambda: half_closed.append(True)  # type: ignore[attr-defined]
        client.readConnectionLost()
        assert half_closed == [True]  # the client's FIN went on to the server
        server.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))

    assert one(run)["cause"] == "client-closed"
