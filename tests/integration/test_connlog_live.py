"""``[log] connections = yes`` through ``twistd -n ocsbal``: a line per
connection, with the cause of its end, from the workers as from one process."""

from __future__ import annotations

import re
import socket
import time

import pytest
from harness import (
    WAIT,
    Launcher,
    Process,
    admin_call,
    options,
    pool_ini,
    register,
)

SIP_ONLY = {15060: "sip"}
LINE = re.compile(
    r"client=(?P<client>\S+) vip_port=15060 server=(?P<server>\S+) "
    r"connect_ms=\S+ duration_s=[\d.]+ up=(?P<up>\d+) down=(?P<down>\d+) "
    r"cause=(?P<cause>[a-z-]+)"
)


def causes(output: str) -> dict[str, str]:
    """The cause each client's connection ended with, by its HOST:PORT."""
    return {m["client"]: m["cause"] for m in LINE.finditer(output)}


def wait_for(balancer: Process, client: str) -> None:
    """Wait until ``client``'s connection has its line."""
    deadline = time.monotonic() + WAIT
    while client not in causes(balancer.output):
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)


def connect_from(source: str, vip: str) -> socket.socket:
    return socket.create_connection((vip, 15060), WAIT, (source, 0))


def name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("workers", [1, 2])
def test_each_connection_is_one_line_with_why_it_ended(
    launch: Launcher, workers: int
) -> None:
    block = 64 + workers
    vip, admin = f"127.0.{block}.10", f"127.0.{block}.1:19900"
    fe1, fe2 = f"127.0.{block}.11", f"127.0.{block}.12"
    # The clients come from .100 (the harness's probes from 127.0.0.1).
    client = f"127.0.{block}.100"
    ini = pool_ini(vip, {"fe1": (fe1, 1)}, SIP_ONLY, workers=workers, idle_timeout=3)
    ini += (
        "\n[monitor]\ninterval = 1\ntimeout = 0.5\nrise = 1\n"
        "\n[log]\nconnections = yes\n"
        f"\n[admin]\nlisten = tcp:19900:interface=127.0.{block}.1\n"
        "\n[limits]\nper_source_connections = 2\n"
    )
    launch.servers(pool_ini(vip, {"fe1": (fe1, 1), "fe2": (fe2, 1)}, SIP_ONLY))
    balancer = launch.balancer(ini)
    seen: dict[str, str] = {}

    with connect_from(client, vip) as sock:  # the client closes
        options(sock)
        first = name(sock)
    seen[first] = "client-closed"
    wait_for(balancer, first)
    with connect_from(client, vip) as idle:  # nothing passes for the idle timeout
        options(idle)
        seen[name(idle)] = "idle-timeout"
        wait_for(balancer, name(idle))
    held = [connect_from(client, vip) for _ in range(2)]
    for n, sock in enumerate(held):
        options(sock, n)
    # A third from one address: over the limit, with workers too (each
    # client address's connections all reach one worker).
    with connect_from(client, vip) as sock:
        seen[name(sock)] = "limit"
        wait_for(balancer, name(sock))
    # The operator adds fe2, and removes fe1 forcing its connections closed.
    new = {"name": "fe2", "address": fe2, "weight": 1}
    assert admin_call(admin, "POST", "/api/servers", new)[0] == 201
    assert admin_call(admin, "DELETE", "/api/servers/fe1?force=1")[0] == 200
    for sock in held:
        seen[name(sock)] = "admin"
        wait_for(balancer, name(sock))
        sock.close()
    deadline = time.monotonic() + WAIT
    while admin_call(admin, "GET", "/api/servers/fe2")[1]["health"] != "up":
        assert time.monotonic() < deadline, "fe2 never came up"
        time.sleep(0.05)
    last = connect_from(client, vip)
    assert options(last) == "fe2"
    seen[name(last)] = "shutdown"
    # fe2 in maintenance: no server can take a new client.
    admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "maint"})
    with connect_from(client, vip) as sock:
        seen[name(sock)] = "no-server"
        wait_for(balancer, name(sock))
    balancer.stop()  # closes the last, held connection
    last.close()
    logged = causes(balancer.output)
    assert {client: logged.get(client) for client in seen} == seen


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_that_fails_or_closes_and_a_registration_that_expires(
    launch: Launcher, workers: int
) -> None:
    """The causes the other test cannot provoke with its one server:
    ``server-down``, ``server-closed`` and ``registration-expired``."""
    block = 75 + workers
    vip, admin = f"127.0.{block}.10", f"127.0.{block}.1:19900"
    fe1, gone = f"127.0.{block}.11", f"127.0.{block}.13"
    client = f"127.0.{block}.100"
    # Nothing listens on gone's address; it is up from the start, and one
    # check in five minutes cannot take it down before its client fails.
    servers = {"fe1": (fe1, 1), "gone": (gone, 1)}
    ini = pool_ini(
        vip,
        servers,
        SIP_ONLY,
        workers=workers,
        idle_timeout=20,  # swept every second
        reap_expired="yes",
        registration_grace=1,
    )
    ini += (
        "\n[monitor]\ninterval = 300\n"
        "\n[log]\nconnections = yes\n"
        f"\n[admin]\nlisten = tcp:19900:interface=127.0.{block}.1\n"
    )
    launch.servers(pool_ini(vip, {"fe1": (fe1, 1)}, SIP_ONLY))
    balancer = launch.balancer(ini)
    seen: dict[str, str] = {}

    assert admin_call(admin, "PATCH", "/api/servers/fe1", {"state": "drain"})[0] == 200
    with connect_from(client, vip) as sock:  # gone alone may be picked
        seen[name(sock)] = "server-down"
        wait_for(balancer, name(sock))
    admin_call(admin, "PATCH", "/api/servers/gone", {"state": "maint"})
    admin_call(admin, "PATCH", "/api/servers/fe1", {"state": "ready"})
    with connect_from(client, vip) as sock:
        # The demo server closes a connection whose SIP it cannot frame; the
        # client reads its end, then closes too, which ends the connection.
        sock.sendall(b"not SIP\r\n\r\n")
        assert sock.recv(1) == b""
        closed_by_server = name(sock)
    seen[closed_by_server] = "server-closed"
    wait_for(balancer, closed_by_server)
    with connect_from(client, vip) as sock:
        register(sock, expires=1)  # closed 1 s past its expiry, quiet or not
        seen[name(sock)] = "registration-expired"
        wait_for(balancer, name(sock))
    balancer.stop()
    logged = causes(balancer.output)
    assert {client: logged.get(client) for client in seen} == seen
