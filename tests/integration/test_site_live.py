"""Several pools in one ``twistd -n ocsbal``: a Front End pool (two workers)
and a Director pool (one process), each its own VIP, one admin interface."""

from __future__ import annotations

import signal
import time
import urllib.request

from harness import (
    WAIT,
    Launcher,
    admin_call,
    await_workers,
    ctl,
    pool_ini,
    told,
    wait_listening,
    who_answers,
)

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
