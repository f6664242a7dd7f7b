"""Slow start and connection limits through ``twistd -n ocsbal``, on loopback."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack

import pytest
from harness import WAIT, Launcher, admin_call, options, pool_ini, told

SIP_ONLY = {15060: "sip"}
MONITOR = "\n[monitor]\nports = 15060\ninterval = 1\ntimeout = 0.5\nrise = 1\n"


def two(block: int, **pool: object) -> str:
    """fe1 and fe2, of weight 100 each, checked every second."""
    servers = {"fe1": (f"127.0.{block}.11", 100), "fe2": (f"127.0.{block}.12", 100)}
    return pool_ini(f"127.0.{block}.10", servers, SIP_ONLY, **pool) + MONITOR


def hold(stack: ExitStack, vip: str, count: int, source: str = "") -> Counter[str]:
    """Open ``count`` connections one after the other, held until ``stack``
    closes; how many each server answered."""
    servers: Counter[str] = Counter()
    for n in range(count):
        sock = stack.enter_context(
            socket.create_connection(
                (vip, 15060), WAIT, (source, 0) if source else None
            )
        )
        servers[options(sock, n)] += 1
    return servers


def refused(vip: str, source: str = "") -> bool:
    """Whether a new connection is closed before its OPTIONS is answered."""
    with socket.create_connection(
        (vip, 15060), WAIT, (source, 0) if source else None
    ) as sock:
        try:
            options(sock)
        except (ConnectionError, AssertionError):
            return True
    return False


def wait_up(admin: str, server: str) -> None:
    deadline = time.monotonic() + WAIT
    while admin_call(admin, "GET", f"/api/servers/{server}")[1]["health"] != "up":
        assert time.monotonic() < deadline, f"{server} never came up"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("slowstart", "workers"), [(0, 1), (60, 1), (60, 2)], ids=["off", "on", "workers"]
)
def test_slow_start_spares_a_server_that_returns(
    launch: Launcher, slowstart: int, workers: int
) -> None:
    """40 clients held on fe1 while fe2 is in maintenance; fe2 comes back and
    40 more arrive.  Without slow start, weighted least connections sends
    every one to the empty fe2; with it, fe2 takes a few and ramps up, in
    each worker as in one process."""
    admin = "127.0.60.1:19900"
    ini = two(60, workers=workers, slowstart=slowstart) + (
        "\n[admin]\nlisten = tcp:19900:interface=127.0.60.1\n"
    )
    launch.servers(ini)
    launch.balancer(ini)
    assert admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "maint"})[0] == 200
    with ExitStack() as stack:
        assert hold(stack, "127.0.60.10", 40) == {"fe1": 40}
        admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "ready"})
        wait_up(admin, "fe2")
        after = hold(stack, "127.0.60.10", 40)
        fe2 = admin_call(admin, "GET", "/api/servers/fe2")[1]
    if slowstart:
        assert 1 <= after["fe2"] <= 8, after
        assert 1 <= fe2["effective_weight"] < fe2["weight"] == 100
    else:
        assert after == {"fe2": 40}
        assert fe2["effective_weight"] == fe2["weight"] == 100


def test_maxconn_per_server_and_for_the_pool(launch: Launcher) -> None:
    """A server at its maxconn is passed over; with every server full, or the
    pool at its own maxconn, the client is refused, logged and counted."""
    ini = (
        two(61, workers=1, maxconn=4).replace(
            "address = 127.0.61.11\n", "address = 127.0.61.11\nmaxconn = 1\n"
        )
        + "\n[admin]\nlisten = tcp:19900:interface=127.0.61.1\n"
    )
    launch.servers(ini)
    balancer = launch.balancer(ini)
    with ExitStack() as stack:
        assert hold(stack, "127.0.61.10", 4) == {"fe1": 1, "fe2": 3}
        assert refused("127.0.61.10")
    with urllib.request.urlopen("http://127.0.61.1:19900/metrics", timeout=WAIT) as r:
        metrics = r.read().decode()
    assert 'ocsbal_limited_connections_total{limit="maxconn",pool="itest"} 1.0' in (
        metrics
    )
    balancer.stop()
    assert told(balancer.output, "the pool has its maxconn of 4 connections") == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_source_is_held_to_its_connections_and_its_rate(
    launch: Launcher, workers: int
) -> None:
    """[limits]: a fourth connection from one address is closed at once while
    another address is served; opening too fast is refused too.  With two
    workers, as with one: each address's connections reach one worker."""
    ini = two(62, workers=workers) + (
        "\n[limits]\nper_source_connections = 3\nper_source_rate = 5\n"
    )
    launch.servers(ini)
    balancer = launch.balancer(ini)
    with ExitStack() as stack:
        hold(stack, "127.0.62.10", 3, source="127.0.62.100")
        assert refused("127.0.62.10", source="127.0.62.100")
        assert not refused("127.0.62.10", source="127.0.62.101")
    outcomes = [refused("127.0.62.10", source="127.0.62.102") for _ in range(8)]
    assert outcomes[:5] == [False] * 5
    assert True in outcomes[5:]
    balancer.stop()
    assert told(balancer.output, "over per_source_connections (3)") == 1
    assert told(balancer.output, "over per_source_rate (5)") >= 1
