"""A SNAT pool on loopback: ``[pool] source`` with two addresses, through
``twistd -n ocsbal``, in one process and in two workers.

(Running out of ports needs a narrowed ``ip_local_port_range``, so a
network namespace: see ``test_network.py``.)
"""

from __future__ import annotations

import socket

import pytest
from harness import WAIT, Launcher, pool_ini

PORT = 15070
SOURCES = ("127.0.74.2", "127.0.74.3")


def peer_of_next_client(server: socket.socket) -> str:
    """The source address of the next connection that brings a byte.

    A health check's connection closes without one, and is passed over.
    """
    while True:
        conn, (host, _port) = server.accept()
        with conn:
            conn.settimeout(WAIT)
            if conn.recv(1):
                return str(host)


@pytest.mark.parametrize("workers", [1, 2])
def test_server_connections_come_from_each_source_address(
    launch: Launcher, workers: int
) -> None:
    """Four clients one after the other: with one process their server
    connections come from the two addresses in turn; with two workers, each
    taking them in turn, one of the two holds two of the four, so both
    addresses are used."""
    vip = "127.0.74.10"
    server = socket.create_server(("127.0.74.11", PORT))
    server.settimeout(WAIT)
    with server:
        ini = pool_ini(
            vip,
            {"fe1": ("127.0.74.11", 1)},
            {PORT: "tcp"},
            workers=workers,
            source=", ".join(SOURCES),
        )
        launch.balancer(ini + "\n[monitor]\ninterval = 300\n")
        peers = []
        for _ in range(4):
            with socket.create_connection((vip, PORT), WAIT) as client:
                client.sendall(b"x")
                peers.append(peer_of_next_client(server))
    if workers == 1:  # in turn (from where the harness's probe left it)
        assert peers[:2] == peers[2:]
        assert set(peers[:2]) == set(SOURCES), peers
    else:
        assert set(peers) == set(SOURCES), peers
