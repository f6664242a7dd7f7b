"""Measure ocsbal's TCP relay side by side with its references; print a table.

``make bench`` runs this.  Every path relays to the same echo server on
127.0.30.11:

- **direct**: no balancer, the ceiling;
- **haproxy**: TCP mode, one thread, ``balance leastconn``;
- **portforward**: ``twistd portforward``, Twisted's own relay;
- **ocsbal**: ``twistd ocsbal`` on a one-server pool.

Each path runs each test once per round, paths taking turns, and the table
shows each figure's median over the rounds with ocsbal's ratios.  The load
generator is asyncio in this process, on the same machine as the
balancer and the echo server, so the figures are what all three achieve
sharing its cores: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
BACKEND = ("127.0.30.11", 16000)
VIP = "127.0.30.10"
#: Where each path listens.
PATHS = {
    "direct": BACKEND,
    "haproxy": (VIP, 16001),
    "portforward": (VIP, 16002),
    "ocsbal": (VIP, 16000),
}
MESSAGE = b"x" * 64

HAPROXY_CFG = f"""
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30m
    timeout server 30m
listen bench
    bind {VIP}:16001
    balance leastconn
    server echo {BACKEND[0]}:{BACKEND[1]}
"""

POOL_INI = f"""
[pool]
name = bench
fqdn = bench.ocsbal.test
vip = {VIP}
idle_timeout = 1800

[ports]
16000 = tcp

[server:echo]
address = {BACKEND[0]}
"""


class Echo(asyncio.Protocol):
    """Write every byte back, as fast as asyncio can."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve_echo() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, *BACKEND, backlog=4096)
    await server.serve_forever()


async def message_rate(address: tuple[str, int], seconds: float) -> float:
    """Round trips of 64 bytes per second over 50 kept-alive connections."""
    deadline = time.monotonic() + seconds
    counts = [0] * 50

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(*address)
        while time.monotonic() < deadline:
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
            counts[i] += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(len(counts))))
    return sum(counts) / seconds


async def connection_rate(address: tuple[str, int], seconds: float) -> float:
    """Connections per second, each one round trip, 20 at a time."""
    deadline = time.monotonic() + seconds
    counts = [0] * 20

    async def client(i: int) -> None:
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
            writer.close()
            await writer.wait_closed()
            counts[i] += 1

    await asyncio.gather(*(client(i) for i in range(len(counts))))
    return sum(counts) / seconds


async def bulk(address: tuple[str, int], megabytes: int) -> float:
    """MB/s of one stream relayed to the echo server and back."""
    reader, writer = await asyncio.open_connection(*address)
    chunk = b"b" * 65536
    total = megabytes * 2**20

    async def send() -> None:
        for _ in range(total // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    async def receive() -> None:
        left = total
        while left:
            left -= len(await reader.read(min(left, 2**20)))

    started = time.monotonic()
    await asyncio.gather(send(), receive())
    elapsed = time.monotonic() - started
    writer.close()
    return megabytes / elapsed


def wait_listening(address: tuple[str, int], process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise SystemExit(f"nothing listens on {address} after 10 s")


@contextmanager
def running(args: list[str], address: tuple[str, int], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(address, process)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_all(work: Path, paths: list[str], stack: ExitStack) -> None:
    """Start the echo server and each balancer; ``stack`` stops them."""
    twistd = [str(BIN / "twistd"), "--nodaemon", "--pidfile="]
    (work / "haproxy.cfg").write_text(HAPROXY_CFG)
    (work / "pool.ini").write_text(POOL_INI)
    commands = {
        "direct": [sys.executable, __file__, "--echo"],
        "haproxy": ["haproxy", "-db", "-f", str(work / "haproxy.cfg")],
        "portforward": [
            *twistd,
            *("portforward", "--port", f"tcp:16002:interface={VIP}"),
            *("--host", BACKEND[0], "--dest_port", str(BACKEND[1])),
        ],
        "ocsbal": [*twistd, "ocsbal", "--config", str(work / "pool.ini")],
    }
    for name in ["direct", *(p for p in paths if p != "direct")]:
        stack.enter_context(running(commands[name], PATHS[name], work / f"{name}.log"))


TESTS: dict[
    str, tuple[str, Callable[[tuple[str, int], argparse.Namespace], Awaitable[float]]]
] = {
    "messages": ("msg/s", lambda a, o: message_rate(a, o.seconds)),
    "connections": ("conn/s", lambda a, o: connection_rate(a, o.seconds)),
    "bulk": ("MB/s", lambda a, o: bulk(a, o.megabytes)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--megabytes", type=int, default=100)
    options = parser.parse_args()
    if options.echo:
        asyncio.run(serve_echo())
        return
    paths = [p for p in PATHS if p != "haproxy" or shutil.which("haproxy")]
    if "haproxy" not in paths:
        print("haproxy not found (apt-get install haproxy): its column is left out")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        start_all(Path(work), paths, stack)
        for round_ in range(options.rounds):
            order = paths[round_ % len(paths) :] + paths[: round_ % len(paths)]
            for test, (_, measure) in TESTS.items():
                for path in order:
                    figure = asyncio.run(measure(PATHS[path], options))
                    results.setdefault((path, test), []).append(figure)
            print(f"round {round_ + 1}/{options.rounds} done", file=sys.stderr)
    report(paths, results, options)


def report(
    paths: list[str],
    results: dict[tuple[str, str], list[float]],
    options: argparse.Namespace,
) -> None:
    median = {key: statistics.median(values) for key, values in results.items()}
    machine = f"{platform.node()}: {os.cpu_count()} CPUs"
    print(
        f"\n{machine}, Python {platform.python_version()}; medians of "
        f"{options.rounds} rounds ({options.seconds:g} s per rate test, "
        f"{options.megabytes} MB bulk)\n"
    )
    header = f"{'test':<20}" + "".join(f"{p:>13}" for p in paths)
    references = [p for p in ("direct", "haproxy", "portforward") if p in paths]
    header += "".join(f"{'ocsbal/' + r:>20}" for r in references)
    print(header)
    print("-" * len(header))
    for test, (unit, _) in TESTS.items():
        row = f"{test + ' ' + unit:<20}"
        row += "".join(f"{median[(p, test)]:>13,.0f}" for p in paths)
        row += "".join(
            f"{median[('ocsbal', test)] / median[(r, test)]:>19.2f}x"
            for r in references
        )
        print(row)


if __name__ == "__main__":
    main()
