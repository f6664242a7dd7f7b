"""``twistd -n ocsbal`` balancing demo servers over real loopback sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import (
    WAIT,
    Launcher,
    connect,
    exchange,
    options,
    pool_ini,
    require_root,
    who_answers,
)

from ocsbal.config import OCS_PORTS

SIP_ONLY = {15060: "sip"}


def three(
    block: int, weights: tuple[int, int, int] = (1, 1, 1)
) -> dict[str, tuple[str, int]]:
    """Three servers fe1-fe3 at 127.0.BLOCK.11-13."""
    return {f"fe{i + 1}": (f"127.0.{block}.{11 + i}", w) for i, w in enumerate(weights)}


def test_all_twelve_ocs_ports_are_balanced(launch: Launcher) -> None:
    """Every OCS port on the VIP reaches a server: SIP ports answer, others echo."""
    require_root("binding the OCS ports 135, 443 and 444")
    ports = {p.number: p.protocol.value for p in OCS_PORTS}
    ini = pool_ini("127.0.10.10", three(10), ports, scheduler="round-robin")
    launch.servers(ini)
    launch.balancer(ini)
    assert len(ports) == 12
    for number, protocol in ports.items():
        exchange("127.0.10.10", number, protocol)


@pytest.mark.parametrize(
    ("scheduler", "weights", "hold", "expected"),
    [
        # Connections closed one by one: the rotating schedulers decide alone.
        ("round-robin", (1, 2, 3), False, {"fe1": 20, "fe2": 20, "fe3": 20}),
        ("weighted-round-robin", (1, 2, 3), False, {"fe1": 10, "fe2": 20, "fe3": 30}),
        # Connections held open: the least-connections schedulers see the load.
        ("least-connections", (1, 2, 3), True, {"fe1": 20, "fe2": 20, "fe3": 20}),
        (
            "weighted-least-connections",
            (1, 2, 3),
            True,
            {"fe1": 10, "fe2": 20, "fe3": 30},
        ),
        # Weight 0 is never picked, by any scheduler.
        ("weighted-least-connections", (0, 1, 1), True, {"fe2": 30, "fe3": 30}),
    ],
)
def test_scheduler_distribution_with_weights(
    launch: Launcher,
    scheduler: str,
    weights: tuple[int, int, int],
    hold: bool,
    expected: dict[str, int],
) -> None:
    # One process, whose schedulers are exact; test_workers.py checks them
    # across several.
    ini = pool_ini(
        "127.0.11.10", three(11, weights), SIP_ONLY, scheduler=scheduler, workers=1
    )
    launch.servers(ini)
    launch.balancer(ini)
    counts: Counter[str] = Counter()
    held: list[socket.socket] = []
    try:
        for _ in range(60):
            sock = connect("127.0.11.10", 15060)
            counts[options(sock)] += 1
            if hold:
                held.append(sock)
            else:
                sock.close()
    finally:
        for sock in held:
            sock.close()
    assert dict(counts) == expected


def test_affinity_a_long_conversation_stays_on_one_server(launch: Launcher) -> None:
    """All messages of one connection reach one server, while others rotate."""
    ini = pool_ini("127.0.12.10", three(12), SIP_ONLY, scheduler="round-robin")
    launch.servers(ini)
    launch.balancer(ini)
    with connect("127.0.12.10", 15060) as long_lived:
        answers = set()
        others = set()
        for n in range(1, 201):
            answers.add(options(long_lived, n))
            if n % 20 == 0:
                others.add(who_answers("127.0.12.10", 15060))
    assert len(answers) == 1
    assert others == {"fe1", "fe2", "fe3"}  # meanwhile, new connections rotated


def test_half_close_passes_through(launch: Launcher) -> None:
    """
    A client that shuts down writing still gets the server's answer.

    The server here reads until EOF, then answers with the byte count and
    closes: that only works if the balancer passes the client's EOF on as a
    half-close rather than closing the whole connection.
    """
    address = ("127.0.13.11", 15444)
    listener = socket.create_server(address)
    listener.settimeout(WAIT)

    def serve() -> None:
        # Bounded: the balancer's readiness probe and the test's connection.
        for _ in range(5):
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by the test, or timed out
                return
            with conn:
                conn.settimeout(WAIT)
                total = 0
                while chunk := conn.recv(65536):
                    total += len(chunk)
                conn.sendall(b"got %d bytes" % total)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        ini = pool_ini("127.0.13.10", {"fe1": ("127.0.13.11", 1)}, {15444: "tcp"})
        launch.balancer(ini)
        with connect("127.0.13.10", 15444) as sock:
            sock.sendall(b"x" * 100_000)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply == b"got 100000 bytes"
    finally:
        listener.close()
        thread.join(WAIT)


def test_refused_server_is_retried_on_another(launch: Launcher) -> None:
    """With fe2 down, every connection still succeeds, and the failure is logged."""
    everyone = three(14)
    ini = pool_ini("127.0.14.10", everyone, SIP_ONLY, scheduler="round-robin")
    running = {k: v for k, v in everyone.items() if k != "fe2"}
    launch.servers(pool_ini("127.0.14.10", running, SIP_ONLY))
    balancer = launch.balancer(ini)
    answers = Counter(who_answers("127.0.14.10", 15060) for _ in range(12))
    assert set(answers) == {"fe1", "fe3"}
    assert sum(answers.values()) == 12
    balancer.assert_stops_cleanly()
    assert "to server fe2 (127.0.14.12:15060) failed" in balancer.output


def test_idle_connection_is_closed_and_active_one_kept(launch: Launcher) -> None:
    """With idle_timeout = 1: silence closes within ~1 s; keep-alives keep it open."""
    ini = pool_ini("127.0.15.10", three(15), SIP_ONLY, idle_timeout=1)
    launch.servers(ini)
    launch.balancer(ini)
    with connect("127.0.15.10", 15060) as idle, connect("127.0.15.10", 15060) as busy:
        options(idle)
        options(busy)
        idle.setblocking(False)
        for beat in range(8):  # 2.4 s of CRLF keep-alives on busy, 0.3 s apart
            busy.sendall(b"\r\n\r\n")
            assert busy.recv(2) == b"\r\n"
            if beat == 1:  # 0.6 s in: idle still open (nothing to read yet)
                with pytest.raises(BlockingIOError):
                    idle.recv(1)
            time.sleep(0.3)
        assert idle.recv(1) == b""  # closed by the balancer by now
        assert options(busy, 2) in {"fe1", "fe2", "fe3"}


def test_no_server_running_closes_clients_and_logs_why(launch: Launcher) -> None:
    ini = pool_ini("127.0.16.10", three(16), SIP_ONLY, retries=2)
    balancer = launch.balancer(ini)
    with connect("127.0.16.10", 15060) as sock:
        assert sock.recv(1) == b""
    balancer.assert_stops_cleanly()
    assert "rejected connection from" in balancer.output


def rss(pid: int) -> int:
    """Resident memory of process ``pid``, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    kb = next(
        line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")
    )
    return int(kb) * 1024


def test_a_server_that_never_reads_costs_bounded_memory(launch: Launcher) -> None:
    """
    Flow control: the balancer stops reading a client its server won't read from.

    Without it, the balancer would read everything the client sends and hold
    it; with it, the client's send blocks once the kernel's and the
    transports' buffers are full.
    """
    address = ("127.0.17.11", 15444)
    listener = socket.create_server(address)
    listener.settimeout(WAIT)
    accepted: list[socket.socket] = []

    def accept_and_never_read() -> None:
        # Bounded: the balancer's readiness probe and the test's connection.
        for _ in range(5):
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed by the test, or timed out
                return

    thread = threading.Thread(target=accept_and_never_read, daemon=True)
    thread.start()
    try:
        ini = pool_ini("127.0.17.10", {"fe1": ("127.0.17.11", 1)}, {15444: "tcp"})
        balancer = launch.balancer(ini)
        before = rss(balancer.popen.pid)
        sent = 0
        with connect("127.0.17.10", 15444) as sock:
            sock.setblocking(False)
            chunk = b"x" * 65536
            end = time.monotonic() + 3
            while time.monotonic() < end and sent < 1 << 30:
                try:
                    sent += sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            grown = rss(balancer.popen.pid) - before
        assert sent < 32 << 20, f"{sent} bytes accepted: nothing pushed back"
        assert grown < 16 << 20, f"the balancer grew by {grown} bytes"
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(WAIT)
