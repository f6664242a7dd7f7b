"""[pool] rebalance through ``twistd -n ocsbal`` (two workers): after a server
returns, quiet clients move to it at the rate until the spread is even enough,
and none while it is down or in slow start."""

from __future__ import annotations

import socket
import time

from harness import WAIT, Launcher, admin_call, options, pool_ini
from test_move_live import back, closed, register, registered_on_fe1

ADMIN = "127.0.71.1:19900"
VIP = "127.0.71.10"


def active(server: str) -> int:
    return int(admin_call(ADMIN, "GET", f"/api/servers/{server}")[1]["active"])


def test_a_returning_server_gets_its_share_back_at_the_rate(launch: Launcher) -> None:
    servers = {"fe1": ("127.0.71.11", 1), "fe2": ("127.0.71.12", 1)}
    ini = pool_ini(
        VIP,
        servers,
        {15060: "sip"},
        workers=2,
        rebalance="yes",
        rebalance_rate=5,
        rebalance_tolerance=10,
        slowstart=3,
    )
    ini += "\n[monitor]\nports = 15060\ninterval = 1\ntimeout = 0.5\nrise = 1\n"
    ini += "\n[admin]\nlisten = tcp:19900:interface=127.0.71.1\n"
    launch.servers(ini)
    balancer = launch.balancer(ini)
    clients = registered_on_fe1(ADMIN, VIP, 40)
    back(ADMIN, "fe2")
    returned = time.monotonic()
    moved_at: list[float] = []
    while time.monotonic() < returned + 12:
        for n, sock in enumerate(clients):
            if closed(sock):  # moved: the client reconnects and registers
                moved_at.append(time.monotonic() - returned)
                sock.close()
                clients[n] = socket.create_connection((VIP, 15060), WAIT)
                options(clients[n], n)
                register(clients[n], n)
        time.sleep(0.05)
    # Nothing moved while fe2 was in slow start (3 s); then about half, at
    # the rate (5 a second), until fe2 holds its share within 10 %.
    assert moved_at, "nothing moved"
    assert min(moved_at) >= 2.5, moved_at
    assert 16 <= len(moved_at) <= 22, moved_at
    assert (len(moved_at) - 1) / (max(moved_at) - min(moved_at) + 1) <= 5 * 1.5
    assert active("fe2") >= 18
    assert active("fe1") + active("fe2") == 40
    for sock in clients:
        sock.close()
    balancer.stop()
    assert "rebalancing: moved" in balancer.output
