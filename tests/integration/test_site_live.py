"""Several pools in one ``twistd -n ocsbal``: a Front End pool (two workers)
and a Director pool (one process), each its own VIP, one admin interface."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

from harness import (
    WAIT,
    Launcher,
    admin_call,
    await_workers,
    connect,
    ctl,
    options,
    pool_ini,
    register,
    told,
    wait_listening,
    who_answers,
)
from test_move_live import closed

ADMIN = "127.0.68.1:19900"
FE = pool_ini("127.0.68.10", {"fe1": ("127.0.68.11", 1)}, {15060: "sip"}, workers=2)
FE += "\n[admin]\nlisten = tcp:19900:interface=127.0.68.1\n"
DIRECTOR = pool_ini(
    "127.0.68.20", {"dir1": ("127.0.68.21", 1)}, {15060: "sip"}, workers=1
).replace("name = itest", "name = director")


def test_two_pools_one_daemon_one_interface(launch: Launcher) -> None:
    launch.servers(FE, "fe-servers")
    launch.servers(DIRECTOR, "director-servers")
    fe, director = launch.write("fe.ini", FE), launch.write("director.ini", DIRECTOR)
    balancer = launch.twistd(fe, "--config", str(director))
    await_workers(balancer, FE)
    for vip in ("127.0.68.10", "127.0.68.20"):
        wait_listening(vip, 15060, balancer)
    assert who_answers("127.0.68.10", 15060) == "fe1"
    assert who_answers("127.0.68.20", 15060) == "dir1"

    status, pools = admin_call(ADMIN, "GET", "/api/pools")
    assert (status, [p["name"] for p in pools]) == (200, ["itest", "director"])
    with connect("127.0.68.20", 15060) as held:
        options(held)
        listed = {
            pool: admin_call(ADMIN, "GET", f"/api/pools/{pool}/connections")[1]
            for pool in ("itest", "director")
        }
    assert [c["server"] for c in listed["director"]] == ["dir1"]
    assert listed["itest"] == []
    listed = ctl("--admin", ADMIN, "--pool", "director", "servers")
    assert listed.returncode == 0, listed.stderr
    assert "dir1" in listed.stdout
    assert "fe1" not in listed.stdout
    drained = ctl("--admin", ADMIN, "--pool", "director", "drain", "dir1")
    assert drained.returncode == 0, drained.stderr
    fe1 = admin_call(ADMIN, "GET", "/api/pools/itest/servers/fe1")[1]
    assert fe1["state"] == "ready"
    with urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=WAIT) as r:
        metrics = r.read().decode()
    assert 'ocsbal_server_up{pool="itest",server="fe1"} 1.0' in metrics
    assert 'ocsbal_server_up{pool="director",server="dir1"} 1.0' in metrics
    with urllib.request.urlopen(f"http://{ADMIN}/", timeout=WAIT) as r:
        page = r.read().decode()
    assert 'id="pool-itest"' in page
    assert 'id="pool-director"' in page

    # A SIGHUP re-reads both files; the operator's drain stays.
    fe.write_text(FE.replace("weight = 1", "weight = 3"))
    director.write_text(DIRECTOR.replace("weight = 1", "weight = 5"))
    balancer.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while told(balancer.output, "reloaded") < 2:
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)
    weights = {
        name: admin_call(ADMIN, "GET", f"/api/pools/{pool}/servers/{name}")[1]
        for pool, name in (("itest", "fe1"), ("director", "dir1"))
    }
    assert (weights["fe1"]["weight"], weights["dir1"]["weight"]) == (3, 5)
    assert weights["dir1"]["state"] == "drain"
    balancer.assert_stops_cleanly()


# A server back from maintenance is up at its next check: soon.
MONITOR = "\n[monitor]\nports = 15060\ninterval = 1\ntimeout = 0.5\nrise = 1\n"


def test_moves_in_one_pool_leave_the_other_pools_clients_alone(
    launch: Launcher,
) -> None:
    """A drain with ``--move-within`` in the Director pool (one process) and a
    rebalance by hand in the Front End pool (two workers), side by side."""
    admin = "127.0.52.1:19900"
    fe_ini = (
        pool_ini(
            "127.0.52.10",
            {"fe1": ("127.0.52.11", 1), "fe2": ("127.0.52.12", 1)},
            {15060: "sip"},
            workers=2,
            rebalance_rate=20,
        )
        + "\n[admin]\nlisten = tcp:19900:interface=127.0.52.1\n"
        + MONITOR
    )
    director_ini = (
        pool_ini(
            "127.0.52.20",
            {"dir1": ("127.0.52.21", 1), "dir2": ("127.0.52.22", 1)},
            {15060: "sip"},
            workers=1,
        ).replace("name = itest", "name = director")
        + MONITOR
    )
    launch.servers(fe_ini, "fe-servers")
    launch.servers(director_ini, "director-servers")
    fe, director = (
        launch.write("fe.ini", fe_ini),
        launch.write("director.ini", director_ini),
    )
    balancer = launch.twistd(fe, "--config", str(director))
    await_workers(balancer, fe_ini)
    for vip in ("127.0.52.10", "127.0.52.20"):
        wait_listening(vip, 15060, balancer)

    def on_first(pool: str, vip: str, second: str) -> list[socket.socket]:
        """Six clients registered through ``vip``, all on the pool's first
        server (its ``second`` in maintenance meanwhile)."""
        path = f"/api/pools/{pool}/servers/{second}"
        admin_call(admin, "PATCH", path, {"state": "maint"})
        clients = [connect(vip, 15060) for _ in range(6)]
        for n, sock in enumerate(clients):
            options(sock, n)
            register(sock, n)
        admin_call(admin, "PATCH", path, {"state": "ready"})
        deadline = time.monotonic() + WAIT
        while admin_call(admin, "GET", path)[1]["health"] != "up":
            assert time.monotonic() < deadline, f"{second} never came up"
            time.sleep(0.05)
        return clients

    fe_clients = on_first("itest", "127.0.52.10", "fe2")
    director_clients = on_first("director", "127.0.52.20", "dir2")

    drained = ctl(
        "--admin", admin, "--pool", "director", "drain", "dir1", "--move-within", "2s"
    )
    assert drained.returncode == 0, drained.stderr
    deadline = time.monotonic() + 2 + WAIT / 3
    while not all(closed(sock) for sock in director_clients):
        assert time.monotonic() < deadline, "the director's clients never moved"
        time.sleep(0.05)
    # The Front End pool's clients did not move, on either server.
    assert not any(closed(sock) for sock in fe_clients)

    rebalanced = ctl("--admin", admin, "--pool", "itest", "rebalance")
    assert rebalanced.returncode == 0, rebalanced.stderr
    deadline = time.monotonic() + WAIT
    while sum(closed(sock) for sock in fe_clients) < 3:
        assert time.monotonic() < deadline, "the Front End pool never rebalanced"
        time.sleep(0.05)
    dir2 = admin_call(admin, "GET", "/api/pools/director/servers/dir2")[1]
    assert dir2["active"] == 0  # what moved there has closed since
    for sock in fe_clients + director_clients:
        sock.close()
    balancer.assert_stops_cleanly()
