"""Run-time control of a live balancer under continuous client load.

Servers are added, drained, re-weighted and removed through the admin API
and through SIGHUP while clients keep opening connections and held
connections keep talking: no client may see a failure.
"""

from __future__ import annotations

import signal
import socket
import time
import urllib.request

from harness import WAIT, Launcher, Load, Process, admin_call, pool_ini, settled

SIP_ONLY = {15060: "sip"}
MONITOR = (
    "\n[monitor]\nports = 15060\ninterval = 1\ntimeout = 0.5\nrise = 2\nfall = 2\n"
)


def controlled(
    block: int,
    servers: dict[str, tuple[str, int]],
    ports: dict[int, str] = SIP_ONLY,
    **pool: object,
) -> str:
    admin = f"\n[admin]\nlisten = tcp:19900:interface=127.0.{block}.1\n"
    ini = pool_ini(f"127.0.{block}.10", servers, ports, **pool)
    return ini + MONITOR + admin


def start(launch: Launcher, block: int) -> tuple[str, Process]:
    """Three demo servers running; a balancer knowing fe1 and fe2; its admin address."""
    everyone = {f"fe{i}": (f"127.0.{block}.1{i}", 1) for i in (1, 2, 3)}
    launch.servers(pool_ini(f"127.0.{block}.10", everyone, SIP_ONLY))
    two = {k: v for k, v in everyone.items() if k != "fe3"}
    balancer = launch.balancer(controlled(block, two, scheduler="round-robin"))
    return f"127.0.{block}.1:19900", balancer


def wait_logged(process: Process, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in process.output:
        assert time.monotonic() < deadline, process.output
        time.sleep(0.05)


def test_add_drain_reweight_and_remove_through_the_api_fail_no_client(
    launch: Launcher,
) -> None:
    admin, balancer = start(launch, 40)
    with Load("127.0.40.10", 15060) as load:
        load.wait_for("fe1")
        load.wait_for("fe2")

        status, added = admin_call(
            admin, "POST", "/api/servers", {"name": "fe3", "address": "127.0.40.13"}
        )
        assert (status, added["health"]) == (201, "down")
        load.wait_for("fe3")  # once two checks in a row passed

        status, fe2 = admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "drain"})
        drained = time.monotonic()
        assert (status, fe2["state"]) == (200, "drain")
        load.wait_for("fe1", after=drained)
        load.wait_for("fe3", after=drained)
        assert "fe2" not in load.since(drained)

        admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "ready", "weight": 3})
        load.wait_for("fe2", after=time.monotonic())

        status, fe1 = admin_call(admin, "DELETE", "/api/servers/fe1")
        removed = time.monotonic()
        assert (status, fe1["removed"]) == (200, True)
        load.wait_for("fe2", after=removed)
        load.wait_for("fe3", after=removed)
        assert "fe1" not in load.since(removed)
        time.sleep(0.5)  # the held connections keep talking through all of it
    assert load.errors == []
    assert all(len(answers) > 10 for answers in load.held_answers.values())
    # Each held connection stayed on its first server throughout.
    assert all(len(set(a)) == 1 for a in load.held_answers.values())
    _, servers = admin_call(admin, "GET", "/api/servers")
    assert [
        (s["name"], s["weight"], s["state"]) for s in servers if not s["removed"]
    ] == [
        ("fe2", 3, "ready"),
        ("fe3", 100, "ready"),
    ]
    balancer.assert_stops_cleanly()


def test_sighup_applies_the_file_and_a_bad_file_changes_nothing(
    launch: Launcher,
) -> None:
    admin, balancer = start(launch, 41)
    config = launch.tmp_path / "pool.ini"
    servers = {"fe2": ("127.0.41.12", 2), "fe3": ("127.0.41.13", 1)}
    with Load("127.0.41.10", 15060) as load:
        load.wait_for("fe1")
        ports = {15060: "sip", 15062: "tcp"}
        config.write_text(
            controlled(41, servers, ports, scheduler="weighted-round-robin")
        )
        reloaded = time.monotonic()
        balancer.popen.send_signal(signal.SIGHUP)
        wait_logged(balancer, f"reloaded {config}")
        socket.create_connection(("127.0.41.10", 15062), timeout=WAIT).close()
        load.wait_for("fe3", after=reloaded)
        steady = time.monotonic()
        load.wait_for("fe2", after=steady)
        assert "fe1" not in load.since(steady)

        config.write_text(
            controlled(41, servers).replace("[monitor]", "[monitor]\nx=1")
        )
        balancer.popen.send_signal(signal.SIGHUP)
        wait_logged(balancer, "refused; the running configuration stays")
        for _ in range(5):  # a storm of reloads during load
            balancer.popen.send_signal(signal.SIGHUP)
        time.sleep(0.5)
    assert load.errors == []
    _, pool = admin_call(admin, "GET", "/api/pool")
    assert pool["scheduler"] == "weighted-round-robin"

    # fe1, removed, is listed until its last connection is closed everywhere.
    def listed() -> list[tuple[str, int]]:
        _, servers = admin_call(admin, "GET", "/api/servers")
        return [(s["name"], s["weight"]) for s in servers]

    servers = settled(listed, lambda now: now == [("fe2", 2), ("fe3", 1)])
    assert servers == [("fe2", 2), ("fe3", 1)]
    assert "unknown key" in balancer.output
    balancer.assert_stops_cleanly()


def test_metrics_and_status_page_are_served(launch: Launcher) -> None:
    admin, balancer = start(launch, 42)
    with Load("127.0.42.10", 15060, short=1, held=1) as load:
        load.wait_for("fe2")
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=WAIT) as r:
        metrics = r.read().decode()
    with urllib.request.urlopen(f"http://{admin}/", timeout=WAIT) as r:
        page = r.read().decode()
    assert 'ocsbal_server_up{pool="itest",server="fe1"} 1.0' in metrics
    assert "process_resident_memory_bytes" in metrics
    assert "fe1" in page
    assert "127.0.42.12" in page
    balancer.assert_stops_cleanly()
