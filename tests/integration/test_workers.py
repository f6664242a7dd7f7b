"""``[pool] workers``: one control process, worker processes sharing the VIP.

Each test runs ``twistd -n ocsbal`` with several workers over demo servers,
on its own 127.0.10x.0/24 block, and checks what an operator relies on:
every port relays, the schedulers hold host-wide, a worker killed is
replaced without touching the others' connections, a restart of the
workers drops nothing, the admin interface adds the workers up, and a
server removed is seen, and forced, across them.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness import (
    WAIT,
    Launcher,
    Load,
    admin_call,
    connect,
    ctl,
    exchange,
    options,
    pool_ini,
    register,
    require_root,
    settled,
)

from ocsbal.config import OCS_PORTS

SIP = {15060: "sip"}


def servers(block: int, weights: tuple[int, ...]) -> dict[str, tuple[str, int]]:
    """Servers fe1, fe2... at 127.0.BLOCK.11 on, of ``weights``."""
    return {f"fe{i + 1}": (f"127.0.{block}.{11 + i}", w) for i, w in enumerate(weights)}


def admin(block: int) -> tuple[str, str]:
    """The ``[admin]`` section for ``block``, and the address it listens on."""
    return (
        f"\n[admin]\nlisten = tcp:19930:interface=127.0.{block}.1\n",
        f"127.0.{block}.1:19930",
    )


def workers(address: str) -> list[dict[str, Any]]:
    status, answer = admin_call(address, "GET", "/api/workers")
    assert status == 200, answer
    return list(answer)


def wait_running(address: str, count: int, generation: int = 1) -> list[dict[str, Any]]:
    """Wait until ``count`` workers of ``generation`` run; return them all."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            every = workers(address)
        except OSError:
            every = []
        running = [
            w
            for w in every
            if w["state"] == "running" and w["generation"] == generation
        ]
        if len(running) == count:
            return every
        assert time.monotonic() < deadline, every
        time.sleep(0.1)


def wait_active(address: str, count: int) -> None:
    """Wait until the pool holds ``count`` connections."""
    deadline = time.monotonic() + WAIT
    while admin_call(address, "GET", "/api/pool")[1]["totals"]["active"] != count:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def start(
    launch: Launcher, block: int, weights: tuple[int, ...], **pool: object
) -> str:
    """Demo servers and a balancer of ``pool``; its admin address."""
    section, address = admin(block)
    ini = pool_ini(f"127.0.{block}.10", servers(block, weights), SIP, **pool)
    launch.servers(ini)
    launch.balancer(ini + section)
    return address


@pytest.mark.parametrize("count", [2, 4])
def test_every_ocs_port_is_relayed_by_the_workers(launch: Launcher, count: int) -> None:
    require_root("binding the OCS ports 135, 443 and 444")
    ports = {p.number: p.protocol.value for p in OCS_PORTS}
    section, address = admin(100)
    ini = pool_ini("127.0.100.10", servers(100, (1, 1, 1)), ports, workers=count)
    launch.servers(ini)
    launch.balancer(ini + section)
    wait_running(address, count)
    _, pool = admin_call(address, "GET", "/api/pool")
    before = {each["port"]: each["accepted"] for each in pool["listeners"]}
    for _ in range(3):
        for number, protocol in ports.items():
            exchange("127.0.100.10", number, protocol)
    _, pool = admin_call(address, "GET", "/api/pool")
    accepted = {
        each["port"]: each["accepted"] - before[each["port"]]
        for each in pool["listeners"]
    }
    assert accepted == dict.fromkeys(ports, 3)


@pytest.mark.parametrize("count", [2, 4])
def test_weighted_least_connections_holds_across_the_host(
    launch: Launcher, count: int
) -> None:
    """120 held connections over weights 1:2:3 land 20/40/60, within 3."""
    section, address = admin(101)
    ini = pool_ini("127.0.101.10", servers(101, (1, 2, 3)), SIP, workers=count)
    launch.servers(ini)
    launch.balancer(ini + section)
    every = wait_running(address, count)
    held, landed = [], Counter[str]()
    try:
        for n in range(120):
            sock = connect("127.0.101.10", 15060)
            held.append(sock)
            landed[options(sock, n)] += 1
        for name, expected in {"fe1": 20, "fe2": 40, "fe3": 60}.items():
            assert abs(landed[name] - expected) <= 3, landed
        # Every worker took a share: the kernel spread the connections.
        by_worker = settled(
            lambda: [w["connections"] for w in workers(address)],
            lambda counts: sum(counts) == 120,
        )
        assert all(n > 0 for n in by_worker), (by_worker, every)
        assert sum(by_worker) == 120
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    ("scheduler", "shares"),
    [
        ("round-robin", {"fe1": 200, "fe2": 200, "fe3": 200}),
        ("weighted-round-robin", {"fe1": 100, "fe2": 200, "fe3": 300}),
    ],
)
def test_the_rotating_schedulers_keep_their_ratios_across_the_host(
    launch: Launcher, scheduler: str, shares: dict[str, int]
) -> None:
    """600 connections one after another: each share within 2 % of its due."""
    section, address = admin(102)
    ini = pool_ini(
        "127.0.102.10",
        servers(102, (1, 2, 3)),
        SIP,
        workers=2,
        scheduler=scheduler,
    )
    launch.servers(ini)
    launch.balancer(ini + section)
    wait_running(address, 2)
    landed: Counter[str] = Counter()
    for n in range(600):
        with connect("127.0.102.10", 15060) as sock:
            landed[options(sock, n)] += 1
    for name, expected in shares.items():
        assert abs(landed[name] - expected) <= 0.02 * 600, landed


def test_a_killed_worker_is_replaced_and_the_others_keep_their_connections(
    launch: Launcher,
) -> None:
    address = start(launch, 103, (1, 1), workers=2)
    wait_running(address, 2)
    held = [connect("127.0.103.10", 15060) for _ in range(40)]
    for n, sock in enumerate(held):
        options(sock, n)
    before = workers(address)
    victim = before[0]
    assert victim["connections"] > 0, before
    assert before[1]["connections"] > 0, before
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    survivors, lost = 0, 0
    for n, sock in enumerate(held):
        try:
            options(sock, 100 + n)
            survivors += 1
        except OSError:
            lost += 1
    # Exactly the killed worker's connections are gone.
    assert (survivors, lost) == (before[1]["connections"], victim["connections"])
    after = wait_running(address, 2)
    assert time.monotonic() - killed_at < 5.0
    replaced = next(w for w in after if w["worker"] == victim["worker"])
    assert replaced["pid"] != victim["pid"]
    assert replaced["restarts"] == 1
    with connect("127.0.103.10", 15060) as sock:
        options(sock)
    for sock in held:
        sock.close()
    launch.processes[-1].stop()
    log = launch.processes[-1].output
    assert (
        f"worker {victim['worker']} (pid {victim['pid']}) died (signal SIGKILL)" in log
    )


def test_restart_workers_under_load_drops_nothing(launch: Launcher) -> None:
    """A new generation takes over the sockets; the old one finishes its work."""
    address = start(launch, 104, (1, 1), workers=2)
    wait_running(address, 2)
    with Load("127.0.104.10", 15060, short=2, held=6) as load:
        time.sleep(0.5)
        done = ctl("--admin", address, "restart-workers")
        assert done.returncode == 0, done.stderr
        every = wait_running(address, 2, generation=2)
        old = [w for w in every if w["generation"] == 1]
        # The held connections stay on the old workers, which keep serving.
        assert {w["state"] for w in old} == {"old"}, every
        assert sum(w["connections"] for w in old) >= 6, every
        moment = time.monotonic()
        load.wait_for("fe1", moment)
        load.wait_for("fe2", moment)
        time.sleep(0.5)
    assert load.errors == []
    assert all(answers for answers in load.held_answers.values())
    # Their connections closed, the old workers leave.
    deadline = time.monotonic() + WAIT
    while any(w["generation"] == 1 for w in workers(address)):
        assert time.monotonic() < deadline, workers(address)
        time.sleep(0.1)
    # SIGUSR2 does the same.
    launch.processes[-1].popen.send_signal(signal.SIGUSR2)
    wait_running(address, 2, generation=3)
    with connect("127.0.104.10", 15060) as sock:
        options(sock)


def test_more_connections_than_one_process_may_open_are_held(
    launch: Launcher, tmp_path: Path
) -> None:
    """With a 1,024-descriptor limit, four workers hold 1,500 connections.

    One process would need 3,000 descriptors (a client side and a server
    side each); each worker needs about a quarter of that.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the test's clients
    try:
        section, address = admin(105)
        ini = pool_ini("127.0.105.10", servers(105, (1, 1)), SIP, workers=4)
        launch.servers(ini)
        config = launch.write("pool.ini", ini + section)
        launch.spawn(
            "twistd",
            [
                "prlimit",
                "--nofile=1024:1024",
                str(Path(sys.executable).with_name("twistd")),
                *("--nodaemon", "--pidfile=", "ocsbal", "--config", str(config)),
            ],
        )
        wait_running(address, 4)
        held = []
        try:
            for n in range(1500):
                sock = connect("127.0.105.10", 15060)
                held.append(sock)
                options(sock, n)
            _, servers_now = admin_call(address, "GET", "/api/servers")
            assert sum(s["active"] for s in servers_now) == 1500
            by_worker = settled(
                lambda: [w["connections"] for w in workers(address)],
                lambda counts: sum(counts) == 1500,
            )
            assert sum(by_worker) == 1500
            assert max(by_worker) < 1024 // 2, by_worker
        finally:
            for sock in held:
                sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_admin_interface_adds_the_workers_up(launch: Launcher) -> None:
    address = start(launch, 106, (1, 1), workers=2)
    wait_running(address, 2)
    held = [connect("127.0.106.10", 15060) for _ in range(10)]
    for n, sock in enumerate(held):
        options(sock, n)
        register(sock, n)
    status, connections = admin_call(address, "GET", "/api/connections")
    assert len(connections) == 10
    assert {c["sip"]["last_message"].split()[0] for c in connections} <= {
        "OPTIONS",
        "200",
    }
    status, pool = admin_call(address, "GET", "/api/pool")
    assert pool["totals"]["active"] == 10
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as page:
        metrics = page.read().decode()
    options_seen = next(
        line
        for line in metrics.splitlines()
        if line.startswith('ocsbal_sip_requests_total{method="OPTIONS"')
    )
    assert options_seen.endswith(" 10.0"), options_seen
    # Each worker's registrations, per server, added up.
    status, listed = admin_call(address, "GET", "/api/servers")
    assert sum(s["registrations"] for s in listed) == 10
    assert [
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("ocsbal_server_registrations{")
    ] == [s["registrations"] for s in listed]
    assert metrics.count("ocsbal_worker_connections{") == 2
    listed = ctl("--admin", address, "--json", "workers")
    assert listed.returncode == 0, listed.stderr
    assert sum(w["connections"] for w in json.loads(listed.stdout)) == 10
    # A drain reaches every worker before the answer says it is done.
    status, fe1 = admin_call(address, "PATCH", "/api/servers/fe1", {"state": "drain"})
    assert status == 200
    assert fe1["state"] == "drain"
    for n in range(8):
        with connect("127.0.106.10", 15060) as sock:
            assert options(sock, n) == "fe2"
    for sock in held:
        sock.close()


def test_sigterm_lets_the_workers_finish_within_the_grace_period(
    launch: Launcher,
) -> None:
    section, address = admin(107)
    ini = pool_ini("127.0.107.10", servers(107, (1,)), SIP, workers=2)
    launch.servers(ini)
    balancer = launch.balancer(ini + section, "--grace", "3")
    wait_running(address, 2)
    sock = connect("127.0.107.10", 15060)
    options(sock)
    balancer.popen.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    options(sock, 2)  # still relayed: within the grace period
    sock.settimeout(WAIT)
    assert sock.recv(1) == b""  # closed when it ends
    balancer.assert_stops_cleanly(signalled=True)
    assert "worker 1 (pid" in balancer.output


def test_a_removed_server_stays_in_sight_until_forced_closed_in_every_worker(
    launch: Launcher,
) -> None:
    """fe1, removed while both workers hold its connections, answers as
    removed with all of them, keeps its name and its place in /metrics, and
    ``?force=1`` closes its connections in both workers; then it is gone."""
    address = start(launch, 108, (1, 1), workers=2)
    wait_running(address, 2)
    # Only fe1 takes new connections, until each worker holds some.
    drain = admin_call(address, "PATCH", "/api/servers/fe2", {"state": "drain"})
    assert drain[0] == 200, drain
    held: list[socket.socket] = []
    while min(w["connections"] for w in workers(address)) == 0:
        assert len(held) < 40, workers(address)
        held.append(connect("127.0.108.10", 15060))
        assert options(held[-1], len(held)) == "fe1"
    ready = admin_call(address, "PATCH", "/api/servers/fe2", {"state": "ready"})
    assert ready[0] == 200, ready
    status, fe1 = admin_call(address, "DELETE", "/api/servers/fe1")
    assert (status, fe1["removed"], fe1["active"]) == (200, True, len(held))
    # A connection to fe2 makes a worker report its counts: fe1's stay.
    with connect("127.0.108.10", 15060) as sock:
        assert options(sock) == "fe2"
    wait_active(address, len(held))
    status, fe1 = admin_call(address, "GET", "/api/servers/fe1")
    assert (status, fe1["removed"], fe1["active"]) == (200, True, len(held))
    table = ctl("--admin", address, "servers")
    assert table.returncode == 0, table.stderr
    assert ["fe1", "127.0.108.11", "1", "removed"] in [
        line.split()[:4] for line in table.stdout.splitlines()
    ]
    listed = json.loads(ctl("--admin", address, "--json", "servers").stdout)
    assert [(s["name"], s["active"]) for s in listed if s["removed"]] == [
        ("fe1", len(held))
    ]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=WAIT) as page:
        metrics = page.read().decode().splitlines()

    def total(family: str) -> float:
        return sum(float(m.split()[-1]) for m in metrics if m.startswith(family + "{"))

    assert total("ocsbal_server_active_connections") == len(held)
    assert total("ocsbal_listener_active_connections") == len(held)
    # Its name stays its own; only ?force=1 changes anything.
    again = ctl("--admin", address, "remove", "fe1")
    assert again.returncode == 1
    assert "error: 409 fe1 is being removed and still has" in again.stderr
    taken = {"name": "fe1", "address": "127.0.108.11"}
    assert admin_call(address, "POST", "/api/servers", taken)[0] == 409
    assert admin_call(address, "DELETE", "/api/servers/fe1?force=1")[0] == 200
    for sock in held:
        sock.settimeout(WAIT)
        assert sock.recv(1) == b""  # closed by the balancer, in either worker
        sock.close()
    deadline = time.monotonic() + WAIT
    while admin_call(address, "GET", "/api/servers/fe1")[0] != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert admin_call(address, "POST", "/api/servers", taken)[0] == 201
