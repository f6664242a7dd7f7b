"""``ocsbal ctl`` against the real admin site, in memory (treq's StubTreq)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ocsbal import Pool, PoolService, Port, Server
from ocsbal._ctl import (
    _COMMANDS,
    AdminClient,
    CtlError,
    _target,
    add_arguments,
    admin_endpoint,
    client_endpoint,
    show_connections,
    show_pool,
    show_servers,
)
from ocsbal._history import History
from ocsbal._report import connections_report, figures, pool_report, servers_report
from ocsbal.admin import admin_site
from test_relay import REGISTER, REGISTERED


@pytest.mark.parametrize(
    ("listen", "client"),
    [
        ("tcp:9900:interface=127.0.0.1", "tcp:host=127.0.0.1:port=9900"),
        ("tcp:9900", "tcp:host=127.0.0.1:port=9900"),
        ("tcp:port=9900:interface=0.0.0.0", "tcp:host=127.0.0.1:port=9900"),
        ("tcp:9900:interface=10.0.0.5", "tcp:host=10.0.0.5:port=9900"),
        # Twisted has no client "tcp6": its "tcp" takes IPv6 addresses.
        ("tcp6:9900:interface=\\:\\:1", "tcp:host=\\:\\:1:port=9900"),
        ("tcp6:9900", "tcp:host=\\:\\:1:port=9900"),
        ("unix:/run/ocsbal/admin.sock", "unix:path=/run/ocsbal/admin.sock"),
        ("unix:address=/run/a.sock:mode=660", "unix:path=/run/a.sock"),
    ],
)
def test_client_endpoint(listen: str, client: str) -> None:
    assert client_endpoint(listen) == client


@pytest.mark.parametrize(
    ("given", "client"),
    [
        ("127.0.0.1:9900", "tcp:host=127.0.0.1:port=9900"),
        ("http://127.0.0.1:9900", "tcp:host=127.0.0.1:port=9900"),
        ("http://127.0.0.1:9900/", "tcp:host=127.0.0.1:port=9900"),
        ("localhost:9900", "tcp:host=localhost:port=9900"),
        ("[::1]:9900", "tcp:host=\\:\\:1:port=9900"),
        ("http://[::1]:9900", "tcp:host=\\:\\:1:port=9900"),
        ("tcp:host=127.0.0.1:port=9900", "tcp:host=127.0.0.1:port=9900"),
        ("unix:path=/run/a.sock", "unix:path=/run/a.sock"),
        # The [admin] listen string itself, as an operator copies it.
        ("tcp:9900:interface=127.0.0.1", "tcp:host=127.0.0.1:port=9900"),
        ("tcp6:9900", "tcp:host=\\:\\:1:port=9900"),
        ("unix:/run/a.sock", "unix:path=/run/a.sock"),
    ],
)
def test_the_admin_interface_as_an_operator_names_it(given: str, client: str) -> None:
    assert admin_endpoint(given) == client
    assert _target(parse("--admin", given, "servers"))[0] == client


@pytest.mark.parametrize(
    "given",
    ["9900", "http://x", "ssl:9900", "tcp:", "tcp:port=x", "127.0.0.1:99999", ""],
)
def test_anything_else_is_refused_in_one_line(given: str) -> None:
    with pytest.raises(CtlError) as refused:
        _target(parse("--admin", given, "servers"))
    said = str(refused.value)
    assert said.startswith(f"--admin {given}: ")
    assert "HOST:PORT, http://HOST:PORT" in said
    assert "\n" not in said


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "json"),
    [
        (["--json", "connections"], True),
        (["connections", "--json"], True),
        (["drain", "fe1", "--json"], True),
        (["connections"], False),
    ],
)
def test_json_is_taken_before_or_after_the_command(argv: list[str], json: bool) -> None:
    assert parse("--admin", "127.0.0.1:9900", *argv).json is json


def test_one_of_config_or_admin_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("servers")
    assert (
        "one of the arguments --config --admin is required" in capsys.readouterr().err
    )


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        pool = Pool(
            name="pool01",
            fqdn="pool01.example.com",
            vip="127.0.1.10",
            servers=(Server("fe1", "127.0.1.11"), Server("fe2", "127.0.1.12")),
            ports=(Port(5060, "sip"), Port(135)),
            scheduler="round-robin",
        )
        self.reactor = MemoryReactorClock()
        self.service = PoolService(pool, self.reactor)
        self.service.startService()
        site = admin_site([(self.service, History(self.reactor))], lambda: b"s3cret")
        self.http = StubTreq(site.resource)

    def call(self, token: bytes | None, *request: Any) -> Any:
        client = AdminClient(self.http, "tcp:host=x:port=1", token)
        return ensureDeferred(client.call(*request))

    def reply(self, *argv: str) -> str:
        """What ``ocsbal ctl ARGV`` prints, the answer coming from the site."""
        args = parse("--admin", "127.0.0.1:9900", *argv)
        build, reply = _COMMANDS[args.command]
        answer = self.successResultOf(self.call(b"s3cret", *build(args)))
        return reply(answer, args)

    def test_ready_says_whether_the_server_takes_connections_now(self) -> None:
        assert self.reply("ready", "fe1") == "fe1 is ready: it takes new connections"
        self.reply("maint", "fe2")
        assert self.reply("ready", "fe2") == (
            "fe2 is ready, and down: it takes new connections once its health "
            "checks pass"
        )
        self.service.servers.record(self.service.servers.backend("fe2"), True)
        assert self.reply("ready", "fe2") == (
            "fe2 is ready, and down: it takes new connections once its health "
            "checks pass (1 of 2 checks passed)"
        )

    def test_no_reply_promises_connections_to_a_server_of_weight_0(self) -> None:
        assert self.reply("weight", "fe1", "0") == (
            "fe1 has weight 0: it takes no new connections"
        )
        assert self.reply("ready", "fe1") == (
            "fe1 is ready, but its weight is 0: it takes no new connections until "
            "it has one above 0"
        )
        assert self.reply("add", "fe3", "127.0.1.13", "--weight", "0") == (
            "added fe3 (127.0.1.13), weight 0; its weight is 0: it takes no new "
            "connections until it has one above 0"
        )
        assert self.reply("weight", "fe1", "5") == (
            "fe1 has weight 5 for new connections"
        )

    def test_the_other_changes_say_what_they_did(self) -> None:
        assert self.reply("add", "fe3", "127.0.1.13") == (
            "added fe3 (127.0.1.13), weight 100: it takes connections once its "
            "health checks pass"
        )
        assert self.reply("drain", "fe1") == (
            "fe1 is draining: no new connections, 0 open"
        )
        assert self.reply("maint", "fe1") == (
            "fe1 is in maintenance: no new connections, no checks, 0 open"
        )
        assert self.reply("remove", "fe3") == "removed fe3: it had no open connections"

    def test_the_token_is_sent_and_changes_are_made(self) -> None:
        answer = self.successResultOf(
            self.call(b"s3cret", "PATCH", "/api/servers/fe2", {"state": "drain"})
        )
        assert answer["state"] == "drain"
        assert self.service.servers.backend("fe2").state.value == "drain"

    def test_an_api_error_is_a_ctl_error(self) -> None:
        failure = self.failureResultOf(self.call(b"guess", "GET", "/api/pool"))
        failure.trap(CtlError)
        assert str(failure.value) == "401 a valid admin token is required"

    def test_tables_show_the_reports(self) -> None:
        relay, servers_now = self.service.relay, self.service.servers
        counted = figures(relay)
        servers = show_servers(servers_report(servers_now, counted)).splitlines()
        assert " ".join(servers[0].split()) == (
            "NAME ADDRESS WEIGHT STATE HEALTH ACTIVE TOTAL LAST CHECK CHANGED"
        )
        assert servers[1].split() == [
            "fe1",
            "127.0.1.11",
            "100",
            "ready",
            "up",
            "0",
            "0",
            "not",
            "checked",
            "yet",
            "-",
        ]
        pool = show_pool(pool_report(servers_now, counted))
        assert pool.startswith("pool pool01 (pool01.example.com) on 127.0.1.10:")
        assert "5060  sip" in pool
        assert show_connections(connections_report(relay)) == (
            "CLIENT  PORT  SERVER  AGE  IDLE  CLOSES IN  FROM CLIENT  FROM SERVER"
            "  REGISTERED"
        )

    def test_connections_show_when_they_close_and_what_is_registered(self) -> None:
        """A client on 5060 registers alice for 900 s; one on 135 says nothing."""
        reactor = self.reactor
        for port, register in ((5060, REGISTER), (135, b"")):
            factory = next(f for p, f, *_ in reactor.tcpServers if p == port)
            peer = IPv4Address("TCP", "192.0.2.7", 40000 + port)
            client = factory.buildProtocol(None)
            client.makeConnection(StringTransport(peerAddress=peer))
            server = reactor.tcpClients[-1][2].buildProtocol(None)
            server.makeConnection(StringTransport())
            client.dataReceived(register)
            server.dataReceived(REGISTERED if register else b"")
            reactor.advance(10)
        table = self.reply("connections").splitlines()
        assert table == [
            "CLIENT           PORT  SERVER  AGE  IDLE  CLOSES IN     "
            "FROM CLIENT  FROM SERVER  REGISTERED",
            f"192.0.2.7:45060  5060  fe1     20s  20s   1780s (idle)  "
            f"{len(REGISTER):<11}  {len(REGISTERED):<11}  "
            "sip:alice@contoso.com (880s)",
            "192.0.2.7:40135  135   fe2     10s  10s   1790s (idle)  "
            "0            0            -",
        ]


@pytest.mark.parametrize(
    ("active", "force", "said"),
    [
        (1, False, "removed fe1: its 1 open connection may finish"),
        (3, False, "removed fe1: its 3 open connections may finish"),
        (3, True, "removed fe1: its 3 open connections are being closed"),
        (0, True, "removed fe1: it had no open connections"),
    ],
)
def test_remove_says_what_becomes_of_the_connections(
    active: int, force: bool, said: str
) -> None:
    args = parse("--admin", "127.0.0.1:9900", "remove", "fe1", *["--force"] * force)
    assert _COMMANDS["remove"][1]({"name": "fe1", "active": active}, args) == said


@pytest.mark.parametrize(
    ("old", "said"),
    [
        ([], "generation 2 of the workers serves; the old workers have left"),
        (
            [1],
            "generation 2 of the workers serves; 1 old worker finishes its 1 "
            "connection",
        ),
        (
            [4, 5],
            "generation 2 of the workers serves; 2 old workers finish their "
            "9 connections",
        ),
    ],
)
def test_restart_workers_counts_the_old_workers_and_their_connections(
    old: list[int], said: str
) -> None:
    workers = [{"generation": 1, "connections": n} for n in old]
    workers.append({"generation": 2, "connections": 0})
    args = parse("--admin", "127.0.0.1:9900", "restart-workers")
    assert _COMMANDS["restart-workers"][1](workers, args) == said


def server_row(**changes: object) -> dict[str, object]:
    """A server as /api/servers reports it, with ``changes``."""
    row: dict[str, object] = {
        "name": "fe1",
        "address": "10.0.0.11",
        "weight": 100,
        "state": "ready",
        "removed": False,
        "health": "up",
        "health_detail": "",
        "active": 0,
        "total": 0,
        "last_check": "ok",
    }
    return row | changes


def test_show_servers_marks_removed_ones() -> None:
    row = server_row(
        address="a",
        weight=1,
        state="drain",
        removed=True,
        health_detail="no longer checked",
        active=3,
        total=9,
    )
    assert show_servers([row]).splitlines()[1].split()[3] == "removed"


def test_show_servers_says_what_health_waits_for_or_why_it_is_not_checked() -> None:
    table = show_servers(
        [
            server_row(health="down", health_detail="2 of 3 checks passed"),
            server_row(
                name="fe2",
                state="maint",
                health="maint",
                health_detail="not checked",
                last_check="in maintenance",
            ),
            server_row(name="fe3"),
        ]
    ).splitlines()
    assert table == [
        "NAME  ADDRESS    WEIGHT  STATE  HEALTH                       ACTIVE  TOTAL"
        "  LAST CHECK      CHANGED",
        "fe1   10.0.0.11  100     ready  down (2 of 3 checks passed)  0       0"
        "      ok              -",
        "fe2   10.0.0.11  100     maint  maint (not checked)          0       0"
        "      in maintenance  -",
        "fe3   10.0.0.11  100     ready  up                           0       0"
        "      ok              -",
    ]


def test_a_relative_token_file_is_taken_from_where_ctl_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    endpoint, admin = _target(
        parse("--admin", "unix:path=/s", "--token-file", "t", "pool")
    )
    assert (endpoint, admin.token_file) == ("unix:path=/s", str(tmp_path / "t"))


def test_show_servers_says_what_the_operator_changed_of_the_file() -> None:
    row = server_row(
        weight=50,
        state="drain",
        overrides={
            "weight": {"running": 50, "file": 100},
            "state": {"running": "drain", "file": "ready"},
        },
    )
    added = {**row, "name": "fe9", "overrides": {"added": True}}
    lines = show_servers([row, added]).splitlines()
    assert lines[1].endswith("weight 50 (file 100), state drain (file ready)")
    assert lines[2].endswith("added")


@pytest.mark.parametrize(
    ("argv", "answer", "said"),
    [
        (["forget", "fe1"], ["fe1"], "forgot the operator's changes to fe1"),
        (["forget", "--all"], ["fe1", "fe2"], "changes to fe1, fe2: as the pool"),
        (["forget", "fe3"], [], "changed nothing of fe3: nothing to forget"),
    ],
)
def test_forget_names_what_it_dropped(
    argv: list[str], answer: list[str], said: str
) -> None:
    args = parse("--admin", "127.0.0.1:9900", *argv)
    build, reply = _COMMANDS["forget"]
    method, path, _ = build(args)
    assert (method, path) == (
        "DELETE",
        "/api/overrides" if args.all else f"/api/overrides/{args.name}",
    )
    assert said in reply({"forgotten": answer}, args)


def test_a_server_in_slow_start_shows_the_part_of_its_weight_it_has() -> None:
    row = server_row(effective_weight=25)
    assert show_servers([row]).splitlines()[1].split()[2] == "25/100"
