"""Health checks against real servers: a dead server is left out, then let back."""

from __future__ import annotations

import time

from harness import WAIT, Launcher, Load, connect, pool_ini

SIP_ONLY = {15060: "sip"}
INTERVAL, TIMEOUT, FALL, RISE = 1.0, 0.5, 2, 2
# Ample time for a health verdict to reach every worker on a loaded machine.
PROPAGATION = 0.5


def monitored(block: int) -> str:
    servers = {"fe1": (f"127.0.{block}.11", 1), "fe2": (f"127.0.{block}.12", 1)}
    ini = pool_ini(f"127.0.{block}.10", servers, SIP_ONLY, scheduler="round-robin")
    return ini + (
        f"\n[monitor]\nports = 15060\ninterval = {INTERVAL:g}\ntimeout = {TIMEOUT:g}\n"
        f"rise = {RISE}\nfall = {FALL}\n"
    )


def test_a_killed_server_is_left_out_until_it_answers_again(launch: Launcher) -> None:
    """Clients connect without pause throughout; only those on fe2 see it die."""
    ini = monitored(30)
    launch.servers(pool_ini("127.0.30.10", {"fe1": ("127.0.30.11", 1)}, SIP_ONLY))
    fe2_ini = pool_ini("127.0.30.10", {"fe2": ("127.0.30.12", 1)}, SIP_ONLY)
    fe2 = launch.servers(fe2_ini, "fe2")
    balancer = launch.balancer(ini)
    with Load("127.0.30.10", 15060, held=0) as load:
        load.wait_for("fe1")
        load.wait_for("fe2")

        fe2.kill()
        killed = time.monotonic()
        # Down within interval x fall + timeout (plus the start-up jitter's share).
        deadline = killed + INTERVAL * FALL + TIMEOUT + INTERVAL
        while "server fe2 (127.0.30.12) is down" not in balancer.output:
            assert time.monotonic() < deadline, balancer.output
            time.sleep(0.05)
        down = time.monotonic()
        down_after = down - killed
        # Until then, connections refused by fe2 were retried on fe1. The
        # control process logs the verdict as it sends it; a worker may pick
        # fe2 once more before the message arrives, and a worker's lines reach
        # the log through the control process: count from a moment later.
        load.wait_for("fe1", after=down)
        time.sleep(PROPAGATION)
        failures_before = balancer.output.count("failed: Connection was refused")
        time.sleep(INTERVAL)
        assert "fe2" not in load.since(killed)
        assert balancer.output.count("failed: Connection was refused") == (
            failures_before
        )

        launch.servers(fe2_ini, "fe2-again")
        deadline = time.monotonic() + INTERVAL * RISE + TIMEOUT + WAIT
        while "server fe2 (127.0.30.12) is up" not in balancer.output:
            assert time.monotonic() < deadline, balancer.output
            time.sleep(0.05)
        load.wait_for("fe2", after=time.monotonic())
    # The connections relayed to fe2 when it was killed closed with it; no
    # connection opened afterwards failed.
    assert [error for opened, error in load.failures if opened > killed] == []
    balancer.assert_stops_cleanly()
    assert down_after <= INTERVAL * FALL + TIMEOUT + INTERVAL


def test_with_every_server_down_clients_are_closed_at_once(launch: Launcher) -> None:
    balancer = launch.balancer(monitored(31))
    deadline = time.monotonic() + WAIT
    while balancer.output.count("is down") < 2:
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)
    started = time.monotonic()
    with connect("127.0.31.10", 15060) as sock:
        host, port = sock.getsockname()[:2]
        assert sock.recv(1) == b""
    assert time.monotonic() - started < 0.5
    # A worker's lines reach the log through the control process; the
    # harness's probe at the start has a line of its own (its servers failed).
    rejected = f"rejected connection from {host}:{port} "
    deadline = time.monotonic() + WAIT
    while rejected not in balancer.output:
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)
    assert "no server" in balancer.output.split(rejected)[-1].splitlines()[0]
    balancer.assert_stops_cleanly()
