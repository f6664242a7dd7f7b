"""``ocsbal ctl`` against the real admin site, in memory (treq's StubTreq)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ocsbal import Pool, PoolService, Port, Server
from ocsbal._ctl import (
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
            ports=(Port(5060, "sip"),),
        )
        reactor = MemoryReactorClock()
        self.service = PoolService(pool, reactor)
        self.service.startService()
        site = admin_site(self.service, lambda: b"s3cret", history=History(reactor))
        self.http = StubTreq(site.resource)

    def call(self, token: bytes | None, *request: Any) -> Any:
        client = AdminClient(self.http, "tcp:host=x:port=1", token)
        return ensureDeferred(client.call(*request))

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
            "NAME ADDRESS WEIGHT STATE HEALTH ACTIVE TOTAL LAST CHECK"
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
        ]
        pool = show_pool(pool_report(servers_now, counted))
        assert pool.startswith("pool pool01 (pool01.example.com) on 127.0.1.10:")
        assert "5060  sip" in pool
        assert show_connections(connections_report(relay)).split() == [
            "CLIENT",
            "PORT",
            "SERVER",
            "AGE",
            "IDLE",
            "FROM",
            "CLIENT",
            "FROM",
            "SERVER",
        ]


def test_show_servers_marks_removed_ones() -> None:
    row = {
        "name": "fe1",
        "address": "a",
        "weight": 1,
        "state": "drain",
        "removed": True,
        "health": "up",
        "active": 3,
        "total": 9,
        "last_check": "ok",
    }
    assert show_servers([row]).splitlines()[1].split()[3] == "removed"


def test_a_relative_token_file_is_taken_from_where_ctl_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    endpoint, admin = _target(
        parse("--admin", "unix:path=/s", "--token-file", "t", "pool")
    )
    assert (endpoint, admin.token_file) == ("unix:path=/s", str(tmp_path / "t"))
