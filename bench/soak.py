"""Soak ocsbal with thousands of registered SIP clients while servers come and go.

Run ``.venv/bin/python bench/soak.py`` (as root, for the file-descriptor
limit; ``--help`` for the knobs).  On loopback, in 127.0.90.0/24:

- three SIP registrars (this script, ``--registrar``) on .11, .12 and .13,
  each answering REGISTER with 200 OK, granting what was asked, naming
  itself in a ``Server`` header, and answering each keep-alive ping (CRLF
  CRLF) with a pong (CRLF), as RFC 5626 has it;
- ``twistd ocsbal`` on the VIP .10, port 5060 = sip, with its admin API;
- the clients (this script, ``--clients``): ``--connections`` TCP
  connections, each registering an address of record of its own, then
  pinging every ``--ping`` seconds and refreshing its registration every
  ``--refresh`` seconds, each answer awaited at most 10 s.

While they run, the servers are drained and made ready again, removed and
added back, and one is killed and restarted (the schedule is printed).
Draining, removing and adding must cost no client anything; killing a
server loses its clients' connections, which then reconnect and register
again through the others.  The report counts, by server, what was asked
and answered, every connection lost and why, and samples the balancer's
memory and CPU.  A client lost on a server that was not killed is a
failure: the last line says whether there was one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
VIP = "127.0.90.10"
ADMIN = ("127.0.90.1", 19990)
SERVERS = {"fe1": "127.0.90.11", "fe2": "127.0.90.12", "fe3": "127.0.90.13"}
ANSWER_TIMEOUT = 10.0

POOL_INI = """
[pool]
name = soak
fqdn = soak.ocsbal.test
vip = {vip}
idle_timeout = 1800

[ports]
5060 = sip

[monitor]
type = tcp
interval = 2
rise = 1

[admin]
listen = tcp:{admin_port}:interface={admin_host}
"""


def raise_fd_limit() -> None:
    """Let this process, and those it starts, open as many files as allowed."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the registrar ---------------------------------------------------------

_HEADER = re.compile(
    rb"^(call-id|cseq|to|from|via|contact|expires):[ \t]*(.*)$", re.I | re.M
)


class Registrar(asyncio.Protocol):
    """Answers REGISTERs and pings on one connection."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.buffer.startswith(b"\r\n\r\n"):
                self.buffer = self.buffer[4:]
                self.transport.write(b"\r\n")
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.transport.write(self.answer(head))

    def answer(self, head: bytes) -> bytes:
        fields = {k.lower(): v for k, v in _HEADER.findall(head)}
        expires = fields.get(b"expires", b"3600")
        return (
            b"SIP/2.0 200 OK\r\nVia: %s\r\nFrom: %s\r\nTo: %s;tag=%s\r\n"
            b"Call-ID: %s\r\nCSeq: %s\r\nContact: %s;expires=%s\r\n"
            b"Server: %s\r\nContent-Length: 0\r\n\r\n"
            % (
                fields.get(b"via", b""),
                fields.get(b"from", b""),
                fields.get(b"to", b""),
                self.name,
                fields.get(b"call-id", b""),
                fields.get(b"cseq", b""),
                fields.get(b"contact", b""),
                expires,
                self.name,
            )
        )


async def serve_registrar(name: str, address: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Registrar(name.encode()), address, 5060, backlog=4096
    )
    await server.serve_forever()


# --- the clients -----------------------------------------------------------


class Tally:
    """What the clients asked and were answered, by server."""

    def __init__(self) -> None:
        self.registered: Counter[str] = Counter()
        self.refreshed: Counter[str] = Counter()
        self.pongs: Counter[str] = Counter()
        self.lost: Counter[tuple[str, str]] = Counter()  # (server, why)
        self.connected = 0


async def one_client(n: int, args: argparse.Namespace, tally: Tally) -> None:
    """Keep client ``n`` registered until the soak ends, reconnecting if lost."""
    deadline = args.started + args.seconds
    rng = random.Random(n)
    cseq = 0
    while time.monotonic() < deadline:
        server = "?"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(VIP, 5060), ANSWER_TIMEOUT
            )
        except (OSError, TimeoutError):
            tally.lost["?", "connect failed"] += 1
            await asyncio.sleep(1)
            continue
        tally.connected += 1
        try:
            next_ping = time.monotonic() + rng.uniform(0, args.ping)
            next_refresh = time.monotonic() + args.refresh
            cseq += 1
            server = await register(n, cseq, reader, writer, args.refresh * 2)
            tally.registered[server] += 1
            while True:
                wake = min(next_ping, next_refresh, deadline)
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
                now = time.monotonic()
                if now >= deadline:
                    break
                if now >= next_refresh:
                    cseq += 1
                    await register(n, cseq, reader, writer, args.refresh * 2)
                    tally.refreshed[server] += 1
                    next_refresh = now + args.refresh
                else:
                    writer.write(b"\r\n\r\n")
                    pong = await asyncio.wait_for(reader.readexactly(2), ANSWER_TIMEOUT)
                    if pong != b"\r\n":
                        raise ConnectionError(f"not a pong: {pong!r}")
                    tally.pongs[server] += 1
                    next_ping = now + args.ping
        except (OSError, EOFError, asyncio.IncompleteReadError) as e:
            tally.lost[server, type(e).__name__] += 1
        except TimeoutError:
            tally.lost[server, "no answer in 10 s"] += 1
        finally:
            tally.connected -= 1
            writer.close()
        if time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(0.5, 2))


async def register(
    n: int,
    cseq: int,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    expires: float,
) -> str:
    """Send a REGISTER; return the name of the server that answered 200."""
    host, port = writer.get_extra_info("sockname")[:2]
    writer.write(
        (
            f"REGISTER sip:soak.ocsbal.test SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {host}:{port};branch=z9hG4bK{n}x{cseq}\r\n"
            f"From: <sip:u{n}@soak.ocsbal.test>;tag={n}\r\n"
            f"To: <sip:u{n}@soak.ocsbal.test>\r\n"
            f"Call-ID: soak-{n}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:u{n}@{host}:{port};transport=tcp>\r\n"
            f"Expires: {int(expires)}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
    if not head.startswith(b"SIP/2.0 200 "):
        raise ConnectionError(f"not a 200: {head[:40]!r}")
    found = re.search(rb"\r\nServer: (\w+)", head)
    return found[1].decode() if found else "?"


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    args.started = time.monotonic()
    tasks = []
    for n in range(args.connections):
        tasks.append(asyncio.create_task(one_client(n, args, tally)))
        if n % 200 == 199:
            await asyncio.sleep(0.2)  # about 1,000 new connections a second
    await asyncio.gather(*tasks)
    return {
        "registered": dict(tally.registered),
        "refreshed": dict(tally.refreshed),
        "pongs": dict(tally.pongs),
        "lost": [[server, why, count] for (server, why), count in tally.lost.items()],
    }


# --- the orchestra ---------------------------------------------------------


def admin(method: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{ADMIN[0]}:{ADMIN[1]}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read() or b"null")


def start_registrar(name: str, work: Path) -> subprocess.Popen[bytes]:
    log = (work / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, __file__, "--registrar", name, SERVERS[name]],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def sample(pid: int) -> tuple[int, float]:
    """The balancer's RSS in KiB and its CPU seconds so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def faults(work: Path, registrars: dict[str, Any]) -> list[tuple[float, str, Any]]:
    """The schedule: (fraction of the run, what, how)."""

    def kill() -> None:
        registrars["fe3"].kill()
        registrars["fe3"].wait()

    def revive() -> None:
        registrars["fe3"] = start_registrar("fe3", work)

    return [
        (
            0.20,
            "drain fe1",
            lambda: admin("PATCH", "/api/servers/fe1", {"state": "drain"}),
        ),
        (
            0.30,
            "ready fe1",
            lambda: admin("PATCH", "/api/servers/fe1", {"state": "ready"}),
        ),
        (0.40, "remove fe2", lambda: admin("DELETE", "/api/servers/fe2")),
        (
            0.50,
            "add fe2 back",
            lambda: admin(
                "POST", "/api/servers", {"name": "fe2", "address": SERVERS["fe2"]}
            ),
        ),
        (0.60, "kill fe3 (SIGKILL)", kill),
        (0.65, "restart fe3", revive),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--registrar", nargs=2, metavar=("NAME", "ADDRESS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--clients", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8000)
    parser.add_argument(
        "--ping", type=float, default=30.0, help="seconds between pings"
    )
    parser.add_argument(
        "--refresh", type=float, default=120.0, help="seconds between REGISTERs"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    args.seconds = args.minutes * 60
    raise_fd_limit()
    if args.registrar:
        asyncio.run(serve_registrar(*args.registrar))
        return
    if args.clients:
        print(json.dumps(asyncio.run(run_clients(args))))
        return
    report = soak(args)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print_report(report)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "pool.ini").write_text(
            POOL_INI.format(vip=VIP, admin_host=ADMIN[0], admin_port=ADMIN[1])
            + "".join(f"\n[server:{n}]\naddress = {a}\n" for n, a in SERVERS.items())
        )
        registrars = {name: start_registrar(name, work) for name in SERVERS}
        balancer = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "ocsbal",
                "--config",
                str(work / "pool.ini"),
            ],
            stdout=(work / "ocsbal.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            return drive(args, work, balancer, registrars)
        finally:
            balancer.send_signal(signal.SIGTERM)
            try:
                balancer.wait(30)
            except subprocess.TimeoutExpired:
                balancer.kill()
            for process in registrars.values():
                process.kill()
                process.wait()


def drive(
    args: argparse.Namespace,
    work: Path,
    balancer: subprocess.Popen[bytes],
    registrars: dict[str, Any],
) -> dict[str, Any]:
    for _ in range(200):
        try:
            admin("GET", "/api/pool")
            break
        except OSError:
            time.sleep(0.1)
    clients = subprocess.Popen(
        [
            *(sys.executable, __file__, "--clients"),
            *("--minutes", str(args.minutes), "--connections", str(args.connections)),
            *("--ping", str(args.ping), "--refresh", str(args.refresh)),
        ],
        stdout=subprocess.PIPE,
    )
    start = time.monotonic()
    schedule = faults(work, registrars)
    done: list[tuple[float, str]] = []
    samples: list[tuple[float, int, float, int]] = []
    while clients.poll() is None:
        elapsed = time.monotonic() - start
        while schedule and elapsed >= schedule[0][0] * args.seconds:
            _, what, act = schedule.pop(0)
            act()
            done.append((round(elapsed, 1), what))
            print(f"{elapsed:7.1f} s  {what}", file=sys.stderr)
        rss, cpu = sample(balancer.pid)
        active = admin("GET", "/api/pool")["totals"]["active"]
        samples.append((round(elapsed, 1), rss, cpu, active))
        time.sleep(5)
    results = json.loads(clients.communicate()[0])
    # Memory once the clients were all connected, against the end.
    steady = [s for s in samples if s[0] >= args.seconds * 0.1]
    cpu = [
        (b[2] - a[2]) / (b[0] - a[0])
        for a, b in itertools.pairwise(samples)
        if b[0] > a[0]
    ]
    return {
        "connections": args.connections,
        "minutes": args.minutes,
        "ping_seconds": args.ping,
        "refresh_seconds": args.refresh,
        "faults": done,
        "clients": results,
        "most_connections": max(s[3] for s in samples),
        "rss_kib": {
            "start": steady[0][1] if steady else None,
            "max": max(s[1] for s in steady) if steady else None,
            "end": steady[-1][1] if steady else None,
        },
        "cpu_percent": {
            "median": round(100 * statistics.median(cpu), 1) if cpu else None,
            "max": round(100 * max(cpu), 1) if cpu else None,
        },
        "balancer_log_lines": len((work / "ocsbal.log").read_text().splitlines()),
    }


def print_report(report: dict[str, Any]) -> None:
    clients = report["clients"]
    print(
        f"\n{report['connections']} SIP connections for {report['minutes']:g} min "
        f"(ping every {report['ping_seconds']:g} s, REGISTER every "
        f"{report['refresh_seconds']:g} s); most open at once: "
        f"{report['most_connections']}"
    )
    print("faults:", "; ".join(f"{t} s {what}" for t, what in report["faults"]))
    print(f"{'server':8} {'registered':>11} {'refreshed':>10} {'pongs':>9}")
    for server in sorted(set(clients["registered"]) | set(clients["refreshed"])):
        print(
            f"{server:8} {clients['registered'].get(server, 0):>11} "
            f"{clients['refreshed'].get(server, 0):>10} "
            f"{clients['pongs'].get(server, 0):>9}"
        )
    for server, why, count in clients["lost"]:
        print(f"lost: {count} on {server} ({why})")
    rss, cpu = report["rss_kib"], report["cpu_percent"]
    print(
        f"balancer RSS: {rss['start']} KiB once connected, {rss['max']} KiB at most, "
        f"{rss['end']} KiB at the end; CPU {cpu['median']} % median, "
        f"{cpu['max']} % at most"
    )
    unexpected = sum(c for server, _, c in clients["lost"] if server != "fe3")
    print(
        "nothing lost but on the killed server"
        if not unexpected
        else f"FAILED: {unexpected} lost elsewhere"
    )


if __name__ == "__main__":
    main()
