"""Several pools in one daemon: their files together (ocsbal._site), one admin
interface for all (ocsbal.admin), twistd's options and ocsbal ctl --pool."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ocsbal import PoolService, Port, Server
from ocsbal._ctl import request_for
from ocsbal._history import History
from ocsbal._reloader import ConfigReloader
from ocsbal._site import load_pools, state_file
from ocsbal.admin import admin_site
from ocsbal.config import ConfigError
from ocsbal.tap import Options, makeService
from pools import make_pool
from test_ctl import parse

FE = """[pool]
name = fe
fqdn = fe.contoso.com
vip = 127.0.0.10
workers = 1

[ports]
5060 = sip

[server:fe1]
address = 127.0.0.11
"""
DIRECTOR = (
    FE.replace("name = fe", "name = director")
    .replace("fe.contoso.com", "director.contoso.com")
    .replace("fe1", "dir1")
    .replace("127.0.0.1", "127.0.0.2")  # the VIP .20, its server .21
)
ADMIN = "\n[admin]\nlisten = tcp:0:interface=127.0.0.1\n"


def files(tmp_path: Path, **texts: str) -> list[str]:
    paths = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.ini"
        path.write_text(text)
        paths.append(str(path))
    return paths


def test_every_problem_between_the_files_at_once(tmp_path: Path) -> None:
    a, b = files(
        tmp_path,
        a=FE + ADMIN,
        b=FE.replace("127.0.0.11", "127.0.0.31")
        + ADMIN.replace("127.0.0.1", "127.0.0.2"),
    )
    with pytest.raises(ConfigError) as refused:
        load_pools([a, b])
    assert [str(p) for p in refused.value.problems] == [
        f"{b}: [pool] name = fe: is already {a}'s pool's name; each pool needs its own",
        f"{b}: [ports] 5060 = sip: {a}'s pool already listens on 127.0.0.10:5060",
        f"{b}: [admin]: {a} has another [admin] section; one interface serves every "
        "pool: keep it in one file",
    ]


def test_each_files_own_problems_come_first_and_all(tmp_path: Path) -> None:
    a, b = files(tmp_path, a=FE.replace("workers = 1", "workers = 0"), b="[pool]\n")
    with pytest.raises(ConfigError) as refused:
        load_pools([a, b])
    said = [str(p) for p in refused.value.problems]
    assert said[0].startswith(f"{a}: [pool] workers = 0")
    assert any(line.startswith(f"{b}: ") for line in said)


def test_the_same_admin_in_two_files_is_one_interface(tmp_path: Path) -> None:
    a, b = files(tmp_path, a=FE + ADMIN, b=DIRECTOR + ADMIN)
    fe, director = load_pools([a, b])
    assert fe.admin is not None
    assert director.admin is None
    # Each keeps the operator's changes in a file of its own.
    assert state_file(a, fe) == str(tmp_path / "a.state")
    assert state_file(b, director) == str(tmp_path / "b.state")


def test_twistd_takes_config_again_and_serves_every_pool(tmp_path: Path) -> None:
    a, b = files(tmp_path, a=FE + ADMIN, b=DIRECTOR)
    options = Options()
    options.parseOptions(["--config", a, "-c", b])
    assert [p.name for p in options.pools] == ["fe", "director"]
    assert options.pool is options.pools[0]
    assert options["config"] == a
    service = makeService(options)
    assert isinstance(service, MultiService)
    fe, director, reloader = list(service)
    assert isinstance(fe, PoolService)
    assert isinstance(director, PoolService)
    assert fe.admin is not None
    assert director.admin is None
    assert [c.servers.pool.name for c, _ in fe.admin.pools] == ["fe", "director"]
    assert isinstance(reloader, ConfigReloader)
    assert reloader.files == [(a, fe), (b, director)]


def test_twistd_refuses_the_files_together(tmp_path: Path) -> None:
    a, b = files(tmp_path, a=FE, b=FE)
    with pytest.raises(
        usage.UsageError, match=r"already listens on 127\.0\.0\.10:5060"
    ):
        Options().parseOptions(["--config", a, "--config", b])


class TwoPoolsTests(SynchronousTestCase):
    """One admin site for two pools."""

    def setUp(self) -> None:
        reactor = MemoryReactorClock()
        self.fe = PoolService(make_pool(ports=[Port(5060)]), reactor)
        director = make_pool(
            Server("dir1", "127.0.2.11"), vip="127.0.2.10", ports=[Port(5060)]
        )
        self.director = PoolService(attrs.evolve(director, name="director"), reactor)
        self.pools = [(self.fe, History(reactor))]
        site = admin_site(self.pools, lambda: None)
        self.treq = StubTreq(site.resource)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"content-type": ["application/json"]}
        data = None if body is None else json.dumps(body).encode()
        response = self.successResultOf(
            self.treq.request(
                method, "http://localhost" + path, headers=headers, data=data
            )
        )
        content = self.successResultOf(response.content())
        if response.headers.getRawHeaders("content-type") == ["application/json"]:
            return response.code, json.loads(content)
        return response.code, content

    def test_one_pool_keeps_the_old_paths_and_has_the_new(self) -> None:
        assert self.call("GET", "/api/servers")[0] == 200
        assert self.call("GET", "/api/pools/pool01/servers")[0] == 200
        assert [p["name"] for p in self.call("GET", "/api/pools")[1]] == ["pool01"]

    def test_several_pools_are_addressed_by_name(self) -> None:
        self.pools.append((self.director, History(MemoryReactorClock())))
        status, pools = self.call("GET", "/api/pools")
        assert (status, [p["name"] for p in pools]) == (200, ["pool01", "director"])
        status, servers = self.call("GET", "/api/pools/director/servers")
        assert (status, [s["name"] for s in servers]) == (200, ["dir1"])
        status, _ = self.call(
            "PATCH", "/api/pools/director/servers/dir1", {"state": "drain"}
        )
        assert status == 200
        assert self.director.servers.backend("dir1").state.value == "drain"
        assert self.fe.servers.backend("fe1").state.value == "ready"
        status, error = self.call("GET", "/api/servers")
        assert status == 404
        assert error["error"] == (
            "this daemon serves several pools (pool01, director): use "
            "/api/pools/NAME/servers"
        )
        assert self.call("GET", "/api/pools/nowhere/servers") == (
            404,
            {"error": "no pool named nowhere"},
        )

    def test_metrics_and_the_status_page_cover_every_pool(self) -> None:
        self.pools.append((self.director, History(MemoryReactorClock())))
        status, metrics = self.call("GET", "/metrics")
        text = metrics.decode()
        assert status == 200
        assert 'ocsbal_server_up{pool="pool01",server="fe1"} 1.0' in text
        assert 'ocsbal_server_up{pool="director",server="dir1"} 1.0' in text
        assert text.count("# TYPE ocsbal_server_up gauge") == 1
        status, page = self.call("GET", "/")
        assert b'id="pool-pool01"' in page
        assert b'id="pool-director"' in page
        assert b'id="director-server-dir1"' in page


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["servers"], ("GET", "/api/servers", None)),
        (
            ["--pool", "director", "servers"],
            ("GET", "/api/pools/director/servers", None),
        ),
        (
            ["--pool", "director", "drain", "dir1"],
            ("PATCH", "/api/pools/director/servers/dir1", {"state": "drain"}),
        ),
        (["--pool", "director", "pools"], ("GET", "/api/pools", None)),
    ],
)
def test_ctl_pool_addresses_one_pool(argv: list[str], expected: Any) -> None:
    assert request_for(parse("--admin", "127.0.0.1:9900", *argv)) == expected


def test_a_sighup_reads_every_file_and_refuses_all_for_one_problem(
    tmp_path: Path,
) -> None:
    a, b = files(tmp_path, a=FE, b=DIRECTOR)
    reactor = MemoryReactorClock()
    fe_pool, director_pool = load_pools([a, b])
    fe, director = PoolService(fe_pool, reactor), PoolService(director_pool, reactor)
    reloader = ConfigReloader(a, fe, reactor)  # type: ignore[arg-type]
    reloader.add(b, director)
    Path(b).write_text(DIRECTOR.replace("[server:dir1]", "[server:dir1]\nweight = 5"))
    reloader.reload()
    assert director.servers.backend("dir1").server.weight == 5
    Path(a).write_text(FE.replace("[server:fe1]", "[server:fe1]\nweight = 7"))
    Path(b).write_text(FE)  # now the same VIP and port as a's
    reloader.reload()
    assert fe.servers.backend("fe1").server.weight == 100


def test_the_examples_run_together_as_one_daemon_would() -> None:
    examples = Path(__file__).parents[1] / "examples"
    names = ["pool.ini", "director.ini", "edge.ini", "edge-external.ini"]
    pools = load_pools([str(examples / name) for name in names])
    assert [p.kind.value for p in pools] == ["enterprise", "director", "edge", "edge"]
    assert pools[3].limits.per_source_connections == 20


def test_ctl_drain_moves_within_a_duration() -> None:
    args = parse("--admin", "h:1", "drain", "fe1", "--move-within", "10m")
    assert request_for(args) == (
        "PATCH",
        "/api/servers/fe1",
        {"state": "drain", "move_within": 600.0},
    )
    plain = parse("--admin", "h:1", "drain", "fe1")
    assert request_for(plain)[2] == {"state": "drain"}
