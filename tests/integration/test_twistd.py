"""The ``twistd ocsbal`` command's life cycle: start, refuse, stop."""

from __future__ import annotations

import re
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from harness import Launcher, connect, options, pool_ini, require_root

EXAMPLES = Path(__file__).parents[2] / "examples"
SIP_ONLY = {15060: "sip"}


def one_server(block: int) -> dict[str, tuple[str, int]]:
    return {"fe1": (f"127.0.{block}.11", 1)}


def test_example_pool_runs_and_stops_cleanly_on_sigterm(launch: Launcher) -> None:
    """examples/pool.ini, addresses swapped for loopback ones, serves and stops."""
    require_root("the OCS ports of examples/pool.ini")
    ini = re.sub(r"\b10\.0\.0\.", "127.0.20.", (EXAMPLES / "pool.ini").read_text())
    launch.servers(ini)
    balancer = launch.balancer(ini)
    with connect("127.0.20.10", 5060) as sock:
        assert options(sock).startswith("fe")
    balancer.assert_stops_cleanly()


def test_bad_configuration_exits_1_listing_every_problem(launch: Launcher) -> None:
    config = launch.write(
        "bad.ini",
        "[pool]\nname = p\nfqdn = p.example.com\nvip = 127.0.21.10\nnat = dsr\n"
        "retries = -1\n\n[ports]\n15060 = sip\n\n[server:fe1]\naddress = nowhere\n",
    )
    process = launch.twistd(config)
    assert process.wait() == 1
    out = process.output
    assert "bad.ini: [pool] nat = dsr: Direct Server Return" in out
    assert "bad.ini: [pool] retries = -1" in out
    assert "bad.ini: [server:fe1] address = nowhere" in out
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.21.10", 15060), timeout=1)


@pytest.mark.parametrize("daemon", [False, True], ids=["nodaemon", "daemon"])
def test_port_in_use_fails_start_naming_the_address(
    launch: Launcher, daemon: bool
) -> None:
    """One port taken: twistd exits 1 with one line saying which, before it
    forks, and leaves nothing bound; in the foreground or as a daemon."""
    taken = socket.create_server(("127.0.22.10", 15061))
    try:
        ini = pool_ini("127.0.22.10", one_server(22), {15060: "sip", 15061: "sips"})
        config = launch.write("pool.ini", ini)
        if daemon:
            twistd = str(Path(sys.executable).with_name("twistd"))
            pidfile = f"--pidfile={launch.tmp_path / 'twistd.pid'}"
            process = launch.spawn(
                "daemon", [twistd, pidfile, "ocsbal", "--config", str(config)]
            )
        else:
            process = launch.twistd(config)
        assert process.wait() == 1
        assert process.output.splitlines()[-1].endswith(
            "[ports] 127.0.22.10:15061 already in use (by another program, or "
            "another ocsbal): stop it, or choose other ports"
        )
        assert "Traceback" not in process.output
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.22.10", 15060), timeout=1)
    finally:
        taken.close()


def test_grace_period_lets_open_connections_finish(launch: Launcher) -> None:
    """After SIGTERM: no new connections, open ones keep working, then exit 0."""
    ini = pool_ini("127.0.23.10", one_server(23), SIP_ONLY)
    launch.servers(ini)
    balancer = launch.balancer(ini, "--grace", "10")
    with connect("127.0.23.10", 15060) as sock:
        assert options(sock, 1) == "fe1"
        balancer.popen.terminate()
        with pytest.raises(ConnectionRefusedError):  # noqa: PT012 -- bounded retry
            for _ in range(100):  # the listener closes promptly after SIGTERM
                # A connection still in the accept backlog when the listening
                # socket closes is reset by the kernel: the listener is going.
                with suppress(ConnectionResetError):
                    socket.create_connection(("127.0.23.10", 15060), timeout=1).close()
                time.sleep(0.05)
        assert options(sock, 2) == "fe1"
        closed = time.monotonic()
    # The last connection closed: shutdown completes without waiting out the grace.
    balancer.assert_stops_cleanly(signalled=True)
    assert time.monotonic() - closed < 5


def test_without_grace_sigterm_closes_open_connections(launch: Launcher) -> None:
    ini = pool_ini("127.0.24.10", one_server(24), SIP_ONLY)
    launch.servers(ini)
    balancer = launch.balancer(ini)
    with connect("127.0.24.10", 15060) as sock:
        options(sock)
        balancer.assert_stops_cleanly()
        assert sock.recv(1) == b""
