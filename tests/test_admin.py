"""The admin API, driven in memory with treq's StubTreq: no sockets, no reactor."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ocsbal import Pool, PoolService, Port, Server
from ocsbal._history import History
from ocsbal._pool import AdminState
from ocsbal.admin import AdminTokenError, admin_site
from ocsbal.config import Admin
from ocsbal.health import IMonitor
from ocsbal.monitors import HealthChecks
from pools import make_pool
from test_relay import REGISTER, REGISTERED

URL = "http://127.0.0.1:9900"


def makePool(**kw: Any) -> Pool:
    """Two servers (fe2 of weight 50) on a SIP port and a plain one."""
    kw.setdefault("ports", (Port(5060, "sip"), Port(135)))
    return make_pool(Server("fe1", "127.0.1.11"), Server("fe2", "127.0.1.12", 50), **kw)


@implementer(IMonitor)
class Answers:
    """A monitor under which fe1 passes every check and fe2 fails every one."""

    def check(self, server: Server) -> Deferred[None]:
        if server.name == "fe1":
            return succeed(None)
        return fail(Exception("port 5060 refused"))


class AdminTests(SynchronousTestCase):
    token: bytes | None = None

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = PoolService(makePool(), self.reactor)
        self.service.startService()
        site = admin_site([(self.service, History(self.reactor))], lambda: self.token)
        self.treq = StubTreq(site.resource)

    def call(
        self, method: str, path: str, body: object = None, **kw: Any
    ) -> tuple[int, Any]:
        if body is not None:
            kw["data"] = body if isinstance(body, bytes) else json.dumps(body).encode()
        if method not in ("GET", "HEAD"):  # as every client of the API does
            kw.setdefault("headers", {}).setdefault(
                "content-type", ["application/json"]
            )
        response = self.successResultOf(self.treq.request(method, URL + path, **kw))
        content = self.successResultOf(response.content())
        is_json = response.headers.getRawHeaders("content-type") == ["application/json"]
        if is_json and content:
            return response.code, json.loads(content)
        return response.code, content

    def connect(self) -> StringTransport:
        """A client connects to port 5060 and its server connection succeeds."""
        factory = self.reactor.tcpServers[0][1]
        client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        factory.buildProtocol(None).makeConnection(client)
        server = self.reactor.tcpClients[-1][2].buildProtocol(None)
        server.makeConnection(StringTransport())
        return client


class ReadTests(AdminTests):
    def test_pool(self) -> None:
        self.connect()
        status, pool = self.call("GET", "/api/pool")
        assert status == 200
        assert (pool["name"], pool["vip"], pool["scheduler"]) == (
            "pool01",
            "127.0.1.10",
            "round-robin",
        )
        assert pool["listeners"] == [
            {
                "port": 5060,
                "protocol": "sip",
                "active": 1,
                "accepted": 1,
                "rejected": 0,
            },
            {"port": 135, "protocol": "tcp", "active": 0, "accepted": 0, "rejected": 0},
        ]
        assert pool["totals"] == {
            "servers": 2,
            "up": 2,
            "ready": 2,
            "active": 1,
            "accepted": 1,
            "rejected": 0,
        }
        assert pool["monitor"]["ports"] == [5060]

    def test_servers(self) -> None:
        self.connect()
        status, servers = self.call("GET", "/api/servers")
        assert status == 200
        assert servers[0] == {
            "name": "fe1",
            "address": "127.0.1.11",
            "weight": 100,
            "effective_weight": 100,
            "maxconn": 0,
            "state": "ready",
            "removed": False,
            "health": "up",
            "streak": 0,
            "health_detail": "",
            "since": 0,
            "last_check": "not checked yet",
            "active": 1,
            "total": 1,
            "bytes_to_server": 0,
            "bytes_from_server": 0,
            "registrations": 0,
            "quiet": 1,
            "moved": 0,
            "move": None,
            "overrides": {},
        }
        assert self.call("GET", "/api/servers/fe2")[1] == servers[1]

    def test_a_server_says_since_when_it_is_down(self) -> None:
        self.reactor.advance(1234.5)
        fe2 = self.service.servers.backend("fe2")
        for _ in range(self.service.pool.monitor.fall):
            self.service.servers.record(fe2, False, "port 5060 refused")
        self.reactor.advance(60)
        _, report = self.call("GET", "/api/servers/fe2")
        assert (report["health"], report["since"]) == ("down", 1234.5)

    def test_registrations_held_per_server_are_those_not_expired(self) -> None:
        self.connect()
        [splice] = self.service.relay.splices
        assert splice.server is not None
        splice.client.dataReceived(REGISTER)
        splice.server.dataReceived(REGISTERED)  # for 900 s, from now
        metric = 'ocsbal_server_registrations{pool="pool01",removed="no",server="fe1"}'
        for seconds, held in [(0, 1), (899, 1), (2, 0)]:
            self.reactor.advance(seconds)
            assert self.call("GET", "/api/servers/fe1")[1]["registrations"] == held
            assert f"{metric} {held:.1f}" in self.call("GET", "/metrics")[1].decode()
        assert self.call("GET", "/api/servers/fe2")[1]["registrations"] == 0

    def test_health_checks_are_counted_per_server_and_result(self) -> None:
        # The service's own checks, started at random offsets, make way.
        self.successResultOf(self.service.health.stopService())
        checks = HealthChecks(
            self.service.servers, Answers(), 5, self.reactor, jitter=lambda: 0.0
        )
        checks.startService()
        self.reactor.advance(0)
        self.reactor.advance(5)
        lines = self.call("GET", "/metrics")[1].decode().splitlines()
        for server, result, count in [
            ("fe1", "ok", 2),
            ("fe1", "failed", 0),
            ("fe2", "ok", 0),
            ("fe2", "failed", 2),
        ]:
            labels = f'pool="pool01",result="{result}",server="{server}"'
            assert f"ocsbal_health_checks_total{{{labels}}} {count}.0" in lines

    def test_connections(self) -> None:
        self.connect()
        self.reactor.advance(7)
        status, [connection] = self.call("GET", "/api/connections")
        assert status == 200
        assert connection == {
            "client": "127.0.0.1:40000",
            "port": 5060,
            "protocol": "sip",
            "server": "fe1",
            "age": 7,
            "idle": 7,
            "bytes_from_client": 0,
            "bytes_from_server": 0,
            "closes_in": 1793,
            "closes_because": "idle",
            "quiet": True,
            "sip": {
                "registered": {},
                "keepalives": 0,
                "transactions": 0,
                "dialogs": 0,
                "last_message": None,
                "inspection": "on",
                "missed_refresh": False,
            },
        }

    def test_metrics(self) -> None:
        self.connect()
        status, text = self.call("GET", "/metrics")
        assert status == 200
        lines = text.decode().splitlines()
        for line in [
            'ocsbal_server_up{pool="pool01",server="fe1"} 1.0',
            'ocsbal_server_weight{pool="pool01",server="fe2"} 50.0',
            'ocsbal_server_active_connections{pool="pool01",removed="no",'
            'server="fe1"} 1.0',
            'ocsbal_server_connections_total{pool="pool01",removed="no",'
            'server="fe1"} 1.0',
            'ocsbal_server_admin_state{pool="pool01",server="fe1",state="drain"} 0.0',
            'ocsbal_listener_accepted_connections_total{pool="pool01",port="5060",'
            'protocol="sip"} 1.0',
            'ocsbal_accept_pauses_total{pool="pool01"} 0.0',
        ]:
            assert line in lines

    def test_one_process_is_its_only_worker_and_cannot_restart_workers(
        self,
    ) -> None:
        self.connect()
        status, [worker] = self.call("GET", "/api/workers")
        assert status == 200
        assert worker["pid"] == os.getpid()
        assert (worker["worker"], worker["state"], worker["connections"]) == (
            1,
            "running",
            1,
        )
        status, refused = self.call("POST", "/api/workers/restart", {})
        assert status == 409
        assert refused["error"].startswith("this pool runs in one process")
        status, text = self.call("GET", "/metrics")
        assert 'ocsbal_worker_connections{generation="1",pid="' in text.decode()

    def test_sip_metrics_count_methods_classes_keepalives_and_give_ups(self) -> None:
        self.connect()
        [splice] = self.service.relay.splices
        assert splice.server is not None
        splice.client.dataReceived(
            b"REGISTER sip:x SIP/2.0\r\n\r\nFOO sip:x SIP/2.0\r\n\r\n\r\n\r\n"
        )
        splice.server.dataReceived(b"SIP/2.0 401 No\r\n\r\n\r\n\x00")
        _, text = self.call("GET", "/metrics")
        lines = text.decode().splitlines()
        for line in [
            'ocsbal_sip_requests_total{method="REGISTER",pool="pool01"} 1.0',
            'ocsbal_sip_requests_total{method="other",pool="pool01"} 1.0',
            'ocsbal_sip_responses_total{class="4xx",pool="pool01"} 1.0',
            'ocsbal_sip_keepalives_total{kind="ping",pool="pool01"} 1.0',
            'ocsbal_sip_keepalives_total{kind="pong",pool="pool01"} 1.0',
            'ocsbal_sip_inspections_given_up_total{pool="pool01",'
            'reason="bad-start-line"} 1.0',
        ]:
            assert line in lines

    def test_unknown_paths_and_methods_are_json_errors(self) -> None:
        assert self.call("GET", "/nothing") == (404, {"error": "no such resource"})
        assert self.call("GET", "/api/servers/fe9") == (
            404,
            {"error": "no server named fe9 in the pool"},
        )
        assert self.call("GET", "/api/servers/fe1/../fe2/x")[0] == 404
        assert self.call("PUT", "/api/pool") == (
            405,
            {"error": "method PUT not allowed"},
        )


class ChangeTests(AdminTests):
    def test_add_a_server(self) -> None:
        status, server = self.call(
            "POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13"}
        )
        assert status == 201
        assert (server["name"], server["weight"], server["health"]) == (
            "fe3",
            100,
            "down",
        )
        assert [s.name for s in self.service.pool.servers] == ["fe1", "fe2", "fe3"]

    def test_a_server_added_says_how_far_it_is_from_rise(self) -> None:
        """rise = 2: after one passing check it is down, 1 of 2 passed."""
        self.call("POST", "/api/servers", {"name": "fe3", "address": "127.0.1.13"})
        self.service.servers.record(self.service.servers.backend("fe3"), True)
        server = self.call("GET", "/api/servers/fe3")[1]
        assert (server["health"], server["last_check"]) == ("down", "ok")
        assert (server["streak"], server["health_detail"]) == (
            1,
            "1 of 2 checks passed",
        )

    def test_an_up_server_says_how_far_it_is_from_fall(self) -> None:
        self.service.servers.record(self.service.servers.backend("fe1"), False, "x")
        server = self.call("GET", "/api/servers/fe1")[1]
        assert (server["health"], server["streak"], server["health_detail"]) == (
            "up",
            1,
            "1 of 2 checks failed",
        )

    def test_a_server_in_maint_is_not_checked_and_says_so(self) -> None:
        server = self.call("PATCH", "/api/servers/fe2", {"state": "maint"})[1]
        assert (server["health"], server["health_detail"]) == ("maint", "not checked")
        assert self.call("GET", "/api/servers")[1][1]["health"] == "maint"
        back = self.call("PATCH", "/api/servers/fe2", {"state": "ready"})[1]
        assert (back["health"], back["health_detail"]) == ("down", "")

    def test_refused_additions_change_nothing(self) -> None:
        before = self.service.pool
        for body, status, error in [
            (b"{nope", 400, "the body is not JSON"),
            (b"[1]", 400, "the body must be a JSON object"),
            (b"x" * 70000, 413, "the body is over 65536 bytes"),
            ({"name": "fe3"}, 400, "missing field 'address'"),
            ({"name": "fe3", "address": "x", "colour": 1}, 400, "unknown field 'col"),
            ({"name": "fe3", "address": "127.0.1.13", "weight": "9"}, 400, "weight mu"),
            ({"name": "fe3", "address": "127.0.1.13", "weight": True}, 400, "weight"),
            ({"name": "fe3", "address": "fe3.example.com"}, 400, "not a host name"),
            ({"name": "fe3", "address": "127.0.1.11"}, 409, "already server fe1's"),
            ({"name": "fe1", "address": "127.0.1.13"}, 409, "already listed"),
            ({"name": "fe3", "address": "127.0.1.10"}, 409, "is the VIP"),
        ]:
            assert self.call("POST", "/api/servers", body) == (
                status,
                {"error": _Containing(error)},
            )
        assert self.service.pool == before

    def test_patch_weight_and_state(self) -> None:
        status, server = self.call(
            "PATCH", "/api/servers/fe2", {"weight": 7, "state": "drain"}
        )
        assert status == 200
        assert (server["weight"], server["state"]) == (7, "drain")
        assert self.service.servers.backend("fe2").pickable is False

    def test_drain_moving_the_clients_within_a_window(self) -> None:
        status, server = self.call(
            "PATCH", "/api/servers/fe2", {"state": "drain", "move_within": 600}
        )
        assert (status, server["state"]) == (200, "drain")
        assert server["move"] == {"within": 600, "ends_in": 600.0, "moved": 0}
        for body in [
            {"state": "ready", "move_within": 60},
            {"state": "drain", "move_within": 0},
            {"state": "drain", "move_within": "10m"},
        ]:
            status, _ = self.call("PATCH", "/api/servers/fe1", body)
            assert status == 400, body
        assert self.service.servers.backend("fe1").state is AdminState.READY

    def test_a_move_is_counted_and_said_once_a_minute(self) -> None:
        self.service.set_state("fe2", AdminState.MAINT)  # both clients on fe1
        self.connect()
        self.connect()
        first, second = self.service.relay.splices
        for splice in (first, second):
            splice.client.dataReceived(REGISTER)
        first.server.dataReceived(REGISTERED)  # the other's REGISTER stays open
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        body = {"state": "drain", "move_within": 150}
        assert self.call("PATCH", "/api/servers/fe1", body)[0] == 200
        for _ in range(160):
            self.reactor.advance(1)
        assert first.closing  # quiet: moved
        assert not second.closing  # its REGISTER unanswered: it stays
        assert self.call("GET", "/api/servers/fe1")[1]["moved"] == 1
        metric = 'ocsbal_server_moved_connections_total{pool="pool01",server="fe1"}'
        assert f"{metric} 1.0" in self.call("GET", "/metrics")[1].decode()
        # A line a minute while it lasts (the closed one is still counted
        # left here: StringTransport never says a connection is lost).
        progress = [line for line in lines if line.startswith("moving server fe1:")]
        assert [(line[:26], line[-10:]) for line in progress] == [
            ("moving server fe1: 1 moved", "90 s to go"),
            ("moving server fe1: 1 moved", "30 s to go"),
        ]
        assert [line[:37] for line in lines if line.startswith("moved server")] == [
            "moved server fe1: 1 connections moved"
        ]

    def test_a_bad_patch_changes_nothing(self) -> None:
        for body, error in [
            ({"weight": 7, "state": "sleeping"}, "state must be one of ready, drain"),
            ({"weight": 70000, "state": "drain"}, "weight = 70000: must be a whole"),
            ({"address": "127.0.1.99"}, "unknown field 'address'; allowed: weight"),
        ]:
            assert self.call("PATCH", "/api/servers/fe2", body) == (
                400,
                {"error": _Containing(error)},
            )
        backend = self.service.servers.backend("fe2")
        assert (backend.weight, backend.state.value) == (50, "ready")

    def test_delete_lets_connections_finish_unless_forced(self) -> None:
        client = self.connect()
        status, server = self.call("DELETE", "/api/servers/fe1")
        assert status == 200
        assert (server["removed"], server["active"]) == (True, 1)
        assert server["health_detail"] == "no longer checked"
        assert not client.disconnecting
        assert [s["name"] for s in self.call("GET", "/api/servers")[1]] == [
            "fe2",
            "fe1",
        ]
        assert self.call("DELETE", "/api/servers/fe1")[0] == 409

    def test_delete_with_force_closes_connections(self) -> None:
        client = self.connect()
        assert self.call("DELETE", "/api/servers/fe1?force=1")[0] == 200
        assert client.disconnecting

    def test_the_last_server_cannot_be_removed(self) -> None:
        self.call("DELETE", "/api/servers/fe1")
        status, answer = self.call("DELETE", "/api/servers/fe2")
        assert (status, answer) == (
            409,
            {"error": "fe2 is the pool's last server; add another before removing it"},
        )


class RemovingTests(AdminTests):
    """A server removed keeps its name, its figures and the API's reach
    until its last connection closes."""

    #: What every refusal of a server being removed with 1 connection ends with.
    FORCE = "; a DELETE of it with ?force=1 (ocsbal ctl remove --force fe1) "

    def close_all(self) -> None:
        """Every server side closes, and with it its client's connection."""
        for splice in list(self.service.relay.splices):
            assert splice.server is not None
            splice.server.connectionLost(Failure(ConnectionDone()))

    def test_it_answers_with_its_counts_until_its_last_connection_closes(
        self,
    ) -> None:
        self.connect()
        self.call("DELETE", "/api/servers/fe1")
        status, server = self.call("GET", "/api/servers/fe1")
        assert status == 200
        assert (server["name"], server["removed"], server["active"]) == (
            "fe1",
            True,
            1,
        )
        self.close_all()
        assert self.call("GET", "/api/servers/fe1")[0] == 404

    def test_a_plain_delete_is_refused_and_a_forced_one_closes_its_connections(
        self,
    ) -> None:
        client = self.connect()
        self.call("DELETE", "/api/servers/fe1")
        assert self.call("DELETE", "/api/servers/fe1") == (
            409,
            {
                "error": "fe1 is being removed and still has 1 open connection, "
                "which may finish" + self.FORCE + "closes them now"
            },
        )
        assert not client.disconnecting
        status, server = self.call("DELETE", "/api/servers/fe1?force=1")
        assert (status, server["removed"]) == (200, True)
        assert client.disconnecting

    def test_its_name_cannot_be_taken_nor_its_settings_changed(self) -> None:
        self.connect()
        self.call("DELETE", "/api/servers/fe1")
        before = self.service.pool
        new = {"name": "fe1", "address": "127.0.1.13"}
        assert self.call("POST", "/api/servers", new) == (
            409,
            {
                "error": "fe1 is being removed and still has 1 open connection: its "
                "name is free once they close" + self.FORCE + "closes them now"
            },
        )
        assert self.call("PATCH", "/api/servers/fe1", {"weight": 5}) == (
            409,
            {"error": _Containing("its state and weight no longer matter;")},
        )
        assert self.service.pool == before
        self.close_all()
        assert self.call("POST", "/api/servers", new)[0] == 201

    def test_a_reload_may_give_its_name_to_another_server(self) -> None:
        """The file rules: the name goes to the new server, which the API
        addresses; the old one is listed as removed, and a forced delete of
        the name closes the connections of both."""
        old = self.connect()
        moved = attrs.evolve(
            self.service.pool,
            servers=(Server("fe1", "127.0.1.13"), Server("fe2", "127.0.1.12", 50)),
        )
        self.successResultOf(self.service.reload(moved))
        listed = self.call("GET", "/api/servers")[1]
        assert [
            (s["name"], s["address"], s["removed"], s["active"]) for s in listed
        ] == [
            ("fe1", "127.0.1.13", False, 0),
            ("fe2", "127.0.1.12", False, 0),
            ("fe1", "127.0.1.11", True, 1),
        ]
        assert self.call("GET", "/api/servers/fe1")[1]["address"] == "127.0.1.13"
        assert self.call("DELETE", "/api/servers/fe1?force=1")[0] == 200
        assert old.disconnecting

    def test_its_connections_count_in_the_metrics_until_they_close(self) -> None:
        """The servers' active connections add up to the listeners'."""
        for _ in range(3):  # round robin: fe1, fe2, fe1
            self.connect()
        self.call("DELETE", "/api/servers/fe1")
        lines = self.call("GET", "/metrics")[1].decode().splitlines()

        def values(family: str) -> dict[str, float]:
            return {
                line.split("{")[1].split("}")[0]: float(line.split()[-1])
                for line in lines
                if line.startswith(family + "{")
            }

        servers = values("ocsbal_server_active_connections")
        listeners = values("ocsbal_listener_active_connections")
        assert sum(servers.values()) == sum(listeners.values()) == 3
        assert servers['pool="pool01",removed="yes",server="fe1"'] == 2
        assert 'pool="pool01",removed="yes",server="fe1"' in values(
            "ocsbal_server_connections_total"
        )


class _Containing(str):
    """Equal to any string that contains it, for readable error checks."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and str(self) in other

    __hash__ = str.__hash__


class TokenTests(AdminTests):
    token = b"s3cret"

    def test_no_or_a_wrong_token_is_refused(self) -> None:
        for headers in [
            {},
            {"authorization": ["Bearer wrong"]},
            {"authorization": ["Bearer"]},
            {"authorization": ["Digest s3cret"]},
            {"authorization": ["Basic !!!"]},
        ]:
            status, answer = self.call("GET", "/api/pool", headers=headers)
            assert (status, answer) == (
                401,
                {"error": "a valid admin token is required"},
            )
        status, _ = self.call(
            "POST", "/api/servers", {"name": "x", "address": "1.2.3.4"}
        )
        assert status == 401
        assert len(self.service.pool.servers) == 2

    def test_bearer_and_basic_tokens_are_accepted(self) -> None:
        basic = base64.b64encode(b"anyone:s3cret").decode()
        for value in ["Bearer s3cret", f"Basic {basic}"]:
            status, _ = self.call("GET", "/", headers={"authorization": [value]})
            assert status == 200


def test_a_missing_or_empty_token_file_is_named(tmp_path: Path) -> None:
    from ocsbal.admin import read_token

    missing = str(tmp_path / "missing")
    with pytest.raises(AdminTokenError, match=f"token_file = {missing}: cannot read"):
        read_token(Admin(token_file=missing))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AdminTokenError, match="is empty"):
        read_token(Admin(token_file=str(tmp_path / "empty")))
    (tmp_path / "token").write_text("s3cret\n")
    assert read_token(Admin(token_file=str(tmp_path / "token"))) == b"s3cret"
    assert read_token(Admin()) is None


class HeadTests(AdminTests):
    def test_head_is_get_without_a_body(self) -> None:
        assert self.call("HEAD", "/api/pool") == (200, b"")
