"""SIP through a live balancer with inspection on: byte-exact both ways."""

from __future__ import annotations

import random
import socket
import threading

from harness import WAIT, Launcher, admin_call, connect, pool_ini

MESSAGE = (
    b"REGISTER sip:contoso.com SIP/2.0\r\nTo: <sip:u%d@contoso.com>\r\n"
    b"Call-ID: %d@itest\r\nCSeq: %d REGISTER\r\nContact: <sip:u@10.1.0.5>\r\n"
    b"Content-Type: text/plain\r\nl: 12\r\n\r\nbody\r\n\r\nbody"
)


def echoed(sock: socket.socket, stream: bytes, seed: int) -> bytes:
    """Send ``stream`` in random pieces while reading the echo back."""
    received = bytearray()

    def read() -> None:
        while len(received) < len(stream):
            chunk = sock.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    cut = random.Random(seed)
    at = 0
    while at < len(stream):
        size = cut.choice([1, 2, 3, 7, 100, 1500, 65536])
        sock.sendall(stream[at : at + size])
        at += size
    reader.join(WAIT)
    return bytes(received)


def test_inspected_sip_is_relayed_byte_exact_and_hostile_input_too(
    launch: Launcher,
) -> None:
    servers = {"fe1": ("127.0.45.11", 1)}
    # The servers echo on 15070 (tcp to them); the balancer inspects it as sip.
    launch.servers(pool_ini("127.0.45.10", servers, {15070: "tcp"}))
    admin = "\n[admin]\nlisten = tcp:19900:interface=127.0.45.1\n"
    balancer = launch.balancer(pool_ini("127.0.45.10", servers, {15070: "sip"}) + admin)
    stream = b"".join(MESSAGE % (n, n, n) + b"\r\n\r\n" * (n % 3) for n in range(2000))
    with connect("127.0.45.10", 15070) as sip:
        assert echoed(sip, stream, seed=1) == stream
        _, [connection] = admin_call("127.0.45.1:19900", "GET", "/api/connections")
        assert connection["sip"]["inspection"] == "on"
        assert connection["sip"]["last_message"] == "REGISTER sip:contoso.com"
        assert connection["sip"]["keepalives"] > 1000

    hostile = b"\x00\xff" * 5000 + MESSAGE % (1, 1, 1) + b"\r\n" * 70000
    with connect("127.0.45.10", 15070) as other:
        assert echoed(other, hostile, seed=2) == hostile
        _, [connection] = admin_call("127.0.45.1:19900", "GET", "/api/connections")
        assert connection["sip"]["inspection"] == "gave up: bad-start-line"
    balancer.assert_stops_cleanly()
