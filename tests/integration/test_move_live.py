"""Drain with move_within through ``twistd -n ocsbal`` (two workers): quiet
clients are moved to the other server over the window, a call is never cut."""

from __future__ import annotations

import socket
import time
from collections import Counter

from harness import WAIT, Launcher, admin_call, options, pool_ini, read_until

ADMIN = "127.0.70.1:19900"
VIP = "127.0.70.10"


def register(sock: socket.socket, n: int) -> None:
    sock.sendall(
        b"REGISTER sip:contoso.com SIP/2.0\r\nTo: <sip:u%d@contoso.com>\r\n"
        b"Call-ID: r%d\r\nCSeq: 1 REGISTER\r\nContact: <sip:u%d@10.1.0.5>\r\n"
        b"Expires: 3600\r\nContent-Length: 0\r\n\r\n" % (n, n, n)
    )
    assert read_until(sock, b"\r\n\r\n").startswith(b"SIP/2.0 200 OK")


def call(sock: socket.socket, method: str, n: int, cseq: int) -> None:
    sock.sendall(
        b"%s sip:bob@contoso.com SIP/2.0\r\nCall-ID: call%d\r\nCSeq: %d %s\r\n"
        b"Content-Length: 0\r\n\r\n" % (method.encode(), n, cseq, method.encode())
    )
    if method != "ACK":
        assert read_until(sock, b"\r\n\r\n").startswith(b"SIP/2.0 200 OK")


def registered_on_fe1(admin: str, vip: str, count: int) -> list[socket.socket]:
    """``count`` clients registered through ``vip``, all on fe1: fe2 is in
    maintenance while they connect (:func:`back` ends it)."""
    admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "maint"})
    clients = [socket.create_connection((vip, 15060), WAIT) for _ in range(count)]
    for n, sock in enumerate(clients):
        assert options(sock, n) == "fe1"
        register(sock, n)
    return clients


def back(admin: str, server: str) -> None:
    """Make ``server`` ready again, and wait until it is up."""
    admin_call(admin, "PATCH", f"/api/servers/{server}", {"state": "ready"})
    deadline = time.monotonic() + WAIT
    while admin_call(admin, "GET", f"/api/servers/{server}")[1]["health"] != "up":
        assert time.monotonic() < deadline, f"{server} never came up"
        time.sleep(0.05)


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.setblocking(True)


def test_drain_moves_quiet_clients_over_the_window_and_cuts_no_call(
    launch: Launcher,
) -> None:
    servers = {"fe1": ("127.0.70.11", 1), "fe2": ("127.0.70.12", 1)}
    ini = pool_ini(VIP, servers, {15060: "sip"}, workers=2)
    ini += "\n[admin]\nlisten = tcp:19900:interface=127.0.70.1\n"
    ini += "\n[log]\nconnections = yes\n"
    launch.servers(ini)
    balancer = launch.balancer(ini)
    clients = registered_on_fe1(ADMIN, VIP, 22)
    callers = clients[:2]  # two calls in progress
    for n, sock in enumerate(callers):
        call(sock, "INVITE", n, 1)
        call(sock, "ACK", n, 1)
    back(ADMIN, "fe2")

    window = 5.0
    status, fe1 = admin_call(
        ADMIN, "PATCH", "/api/servers/fe1", {"state": "drain", "move_within": window}
    )
    assert (status, fe1["move"]["within"]) == (200, window)
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    hung_up = False
    while time.monotonic() < started + window + 2:
        for n, sock in enumerate(clients):
            if n not in closed_at and closed(sock):
                closed_at[n] = time.monotonic() - started
        if not hung_up and time.monotonic() > started + 1.5:
            call(callers[0], "BYE", 0, 2)  # the first call ends mid-window
            hung_up = True
        time.sleep(0.05)

    # Every quiet client was moved, within the window, and no second saw a
    # burst: the even rate is 20 clients over 5 s.
    assert set(closed_at) == set(range(22)) - {1}, sorted(closed_at)
    assert max(closed_at.values()) <= window + 1.0
    per_second = Counter(int(at) for at in closed_at.values())
    assert max(per_second.values()) <= 2 * 21 / window + 1, per_second
    # The call still up stays: its connection is open and answers.
    assert options(callers[1], 99) == "fe1"
    # A moved client reconnects through the VIP, to the other server.
    with socket.create_connection((VIP, 15060), WAIT) as again:
        assert options(again) == "fe2"
        register(again, 5)
    balancer.stop()
    output = balancer.output
    assert output.count("cause=moved") == 21
    assert "moved server fe1: 21 connections moved; 1 still busy stay" in output
