"""An Office Communications Server pool at full size: up to 100,000 clients.

Run ``.venv/bin/python bench/pool_scale.py`` (as root: it may raise two
kernel limits, see below; ``--help`` for the knobs).  It reproduces an OCS
2007 R2 Enterprise pool on loopback: Office Communicator clients, each
holding ONE TCP connection to the pool's VIP port 5060, through the
balancer under test to eight front-end servers.  Side by side, one after
the other, for HAProxy and ocsbal:

- eight front ends, ``bench/ocsim.c serve``, on 127.0.210.11-18:5060, one
  process each, answering REGISTER with 200 OK, SUBSCRIBE with 200 OK and
  1.5 KB of roaming-contacts XML, and each keep-alive ping (CRLF CRLF)
  with a pong (CRLF);
- the balancer on the VIP 127.0.200.10:5060, relaying to them with least
  connections: ``haproxy`` processes (TCP mode, ``balance leastconn``,
  ``timeout client/server 1h``; one process holds fewer than 10,000
  relayed connections in 20,000 files, so several bind the VIP with
  SO_REUSEPORT, which HAProxy sets by default, and the kernel spreads the
  connections over them), or ``twistd ocsbal`` on a pool of those eight
  servers, ``5060 = sip`` (or ``--port-type``: ``sips`` passes the bytes
  through unread, as for TLS; ``sips-terminate``, below, is real TLS), with
  ``[pool] workers = N``: N is ``--workers``
  if given (``workers = 1`` too), else the clients / 8,000 rounded up, and
  the key is left out when that is 1 (ocsbal's own default then); the
  same N is the number of HAProxy processes (one of two threads when N is
  1, else one thread each);
- the clients, ``bench/ocsim.c clients``, up to 12,000 a process (20,000
  files a process is the hard limit here), from 127.0.201.1-127.0.209.254,
  at most 2,000 connections an address.  Each client connects, REGISTERs
  (Office Communicator's headers, Expires 3600) and waits for the 200,
  then pings every ``--keepalive`` seconds (30) and times the pong,
  refreshes its registration every ``--refresh`` seconds (300) and sends a
  SUBSCRIBE every ``--subscribe`` seconds or so (600): about 1 request a
  second for every 25 clients.

Terminated TLS (``--port-type sips-terminate``): the pool over SIP/TLS,
ended by the balancer.  ``bench/ocsim.c`` speaks no TLS, so HAProxy
processes that are not measured wrap it, as bench/setups.py does for
bench/run.py's SIP over TLS:

- the clients connect in plain TCP to 127.0.200.50:5060, where the
  clients' wrapper opens TLS to the VIP's port 5061, checking the pool's
  certificate (``pool.ocsbal.test``, sent as SNI) as Office Communicator
  does, from an address of its own a process (127.0.200.100 onwards);
- the balancer ends that TLS on 127.0.200.10:5061 with the pool's
  certificate and opens TLS to the front end it picks, on its port 5061,
  checking the front end's certificate (``feN.pool.ocsbal.test``) against
  the servers' authority: HAProxy with ``bind ... ssl crt``, ``server ...
  ssl verify required ca-file ... verifyhost`` and a TCP health check
  (``no-check-ssl``); ocsbal with ``5061 = sips``, ``[tls] mode =
  terminate`` (``inspect = yes``, its default: the decrypted SIP is
  followed) and ``tls_name`` for each server; neither resumes a session or
  issues tickets (``no-ssl-reuse``, ``no-tls-tickets``,
  ``tune.ssl.cachesize 0``: each connection is a full handshake);
- the front ends' wrapper ends TLS on 127.0.210.11-18:5061, each address
  with its front end's certificate, and relays the plain SIP to ocsim on
  the same address's 5060.

Each wrapper is clients / 8,000 (rounded up) HAProxy processes of one
thread, taking ``--haproxy-maxconn`` each and sharing their addresses with
SO_REUSEPORT, as the measured HAProxy does.  They are started once and
serve both balancers' runs.  Their CPU and RSS are sampled as groups of
their own (``tls_clients_side``, ``tls_servers_side``), beside the
simulators', never in the balancer's figures.  The certificates (RSA
2048, from ``trustme``, two authorities) are written to the work
directory.  Every client is two TLS handshakes, four ends of them on
this machine (the clients' wrapper's, the balancer's two, the front-end
wrapper's), so ``--rate`` must be well under the plain runs'.

For each balancer, in turn: start it; warm it up with 200 clients (so what
all connections share is loaded) and read its memory; connect the clients
at ``--rate`` connections a second (in all) until every one is registered;
hold them ``--steady`` seconds (30, or 600 at 100,000 clients) while every
process's CPU is read from ``/proc``; then the storm (unless
``--no-storm``): every client closes its connection at once and connects
and registers again as fast as it can (each client process keeps at most
``--inflight``, 2,000, connecting or registering at once), and the time
until all are registered again is the figure; a short check that they all
stay.  A balancer whose processes grow past ``--max-rss`` (4 GiB in all),
or that exits, is stopped and its error recorded; the next one still runs.

The figures, for each balancer:

- held: clients registered through the whole steady period (the fewest
  any moment saw, summed over the client processes), connections lost
  then (must be 0), and how the front ends share them;
- memory per connection: the resident set size (``VmRSS``) summed over
  every balancer process (each HAProxy, or ocsbal's whole process
  session: its workers too), with the clients registered less after the
  warm-up, divided by the clients; PSS (``smaps_rollup``) beside it, which
  does not count pages the workers share once each;
- CPU at steady state: ``utime + stime`` of every balancer process over
  the steady period, as a percentage of one core; the simulators' own
  (clients, front ends), and with terminated TLS the two wrappers', beside
  it, to show they are not the bottleneck;
- keep-alive round trip (ping to pong, through the balancer and a front
  end) p50, p99 and max, merged from every client process's histogram;
- the storm: seconds until every client is registered again, failures
  (connections refused, reset or timed out, REGISTERs unanswered within
  10 s; each failed client retries after about a second) and retries.

It prints a table and writes the JSON (every figure, each process's
reports, the kernel limits, the machine) to ``--output``
(``/tmp/ocsbal-pool-scale`` by default: ``bench/results`` is tracked).

Addresses: 127.0.200.0/24 (the VIP .10; HAProxy's and ocsbal's server
connections come from .20 onwards, one address a HAProxy process, so that
they use no ports of 127.0.0.1; with terminated TLS the clients' wrapper
on .50 and its connections from .100 onwards), 127.0.201.0/24-127.0.209.0/24
(clients) and 127.0.210.0/24 (front ends, and their TLS wrapper's 5061),
which nothing else on this machine uses;
the run refuses to start if anything listens there.  ocsbal's ``source``
binds before it connects (port 0, without ``IP_BIND_ADDRESS_NO_PORT``), so
one address gives all its workers at most about 28,000 server connections
(the ephemeral port range here), those left in TIME_WAIT by a storm
included: over 12,000 clients the pool has no ``source`` and its server
connections come from 127.0.0.1.

Kernel limits: ``net.core.somaxconn`` and ``net.ipv4.tcp_max_syn_backlog``
are raised to 65535 for the run if they are lower and writable, and put
back after (``--no-sysctl`` leaves them); those and the others that bound
a run (``ip_local_port_range``, ``fs.file-max``, ``tcp_max_tw_buckets``,
``tcp_tw_reuse``, ``nf_conntrack_max``...) are recorded in the JSON.

Everything started is stopped at the end, on an error, Ctrl-C or SIGTERM
(each in a session of its own, killed with the run too), and every wait is
bounded.  Examples (on this 2-core machine: about 1.5 minutes, 1.3 and 3.5
minutes; the full run about 14 minutes a balancer)::

    .venv/bin/python bench/pool_scale.py --clients 4000 --steady 20
    .venv/bin/python bench/pool_scale.py --clients 40000 --balancers haproxy --rate 2000
    .venv/bin/python bench/pool_scale.py --clients 100000 --balancers haproxy \
        --rate 2000 --steady 120
    # the full pool, both side by side: 13 HAProxy processes, workers = 13
    .venv/bin/python bench/pool_scale.py --clients 100000 --rate 2000
    .venv/bin/python bench/pool_scale.py --clients 40000 --balancers ocsbal --workers 5
    # terminated TLS, both balancers, the wrappers around the simulators
    .venv/bin/python bench/pool_scale.py --clients 4000 --steady 20 --rate 300 \
        --port-type sips-terminate
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme

sys.path.insert(0, str(Path(__file__).parent))
from supervise import (
    WAIT,
    BenchError,
    Service,
    Supervisor,
    cpu_seconds,
    raise_fd_limit,
    rss_kib,
    stop_on_signals,
)

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
VIP = "127.0.200.10"
PORT = 5060
#: SIP over TLS: the VIP's port, and the front ends' TLS wrappers' (``--port-type
#: sips-terminate``).
TLS_PORT = 5061
FRONT_ENDS = {f"fe{k}": f"127.0.210.{10 + k}" for k in range(1, 9)}
#: The pool's name, in its certificate; each front end's certificate name.
FQDN = "pool.ocsbal.test"
FRONT_END_NAMES = {name: f"{name}.{FQDN}" for name in FRONT_ENDS}
#: Terminated TLS: where the clients' plain SIP goes (the TLS-originating
#: wrapper, port 5060), and the wrapper processes' source addresses (.100
#: onwards, one a process) for their TLS to the VIP.
TLS_WRAPPER = "127.0.200.50"
TLS_WRAPPER_SOURCE = ipaddress.IPv4Address("127.0.200.100")
#: Connections a wrapper process is given, at most (it takes ``--haproxy-maxconn``).
TLS_WRAPPER_SHARE = 8000
#: The balancers' own source addresses (HAProxy: one a process).
BALANCER_SOURCE = ipaddress.IPv4Address("127.0.200.20")
#: The clients' source addresses, in order: .1-.254 of 127.0.201-209.
CLIENT_SOURCES = [
    f"127.0.{block}.{host}" for block in range(201, 210) for host in range(1, 255)
]
OUR_BLOCKS = ("127.0.200.", *(f"127.0.{b}." for b in range(201, 211)))
#: Over this many clients, ocsbal's pool has no ``source`` (see the docstring).
OCSBAL_SOURCE_MAX = 12000
WARMUP_CLIENTS = 200
SYSCTL_RAISE = {"net.core.somaxconn": 65535, "net.ipv4.tcp_max_syn_backlog": 65535}
SYSCTL_RECORD = (
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_mem",
    "net.core.netdev_max_backlog",
    "fs.file-max",
    "fs.nr_open",
    "net.netfilter.nf_conntrack_max",
)
#: The clients' counts that are failures.
FAILURES = (
    "connect_refused",
    "connect_reset",
    "connect_timeout",
    "connect_other",
    "register_timeout",
    "register_closed",
    "register_reset",
    "register_rejected",
    "lost_closed",
    "lost_reset",
    "lost_timeout",
    "lost_rejected",
    "send_failed",
    "bad_input",
)
LOST = ("lost_closed", "lost_reset", "lost_timeout", "lost_rejected", "bad_input")


# ------------------------------------------------------------------ helpers


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    try:
        return " ".join(sysctl_path(name).read_text().split())
    except OSError:
        return None


def raise_sysctls(enabled: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Raise what SYSCTL_RAISE names, if lower; return (what to restore, notes)."""
    restore, notes = {}, {}
    for name, wanted in SYSCTL_RAISE.items():
        now = read_sysctl(name)
        if now is None or int(now) >= wanted:
            continue
        if not enabled:
            notes[name] = f"left at {now} (--no-sysctl)"
            continue
        try:
            sysctl_path(name).write_text(str(wanted))
        except OSError as e:
            notes[name] = f"left at {now}: not writable ({e.strerror})"
        else:
            restore[name] = now
            notes[name] = f"raised from {now} to {wanted} for the run"
    return restore, notes


def restore_sysctls(restore: dict[str, str]) -> None:
    for name, value in restore.items():
        with contextlib.suppress(OSError):
            sysctl_path(name).write_text(value)


def listening_on_our_addresses() -> list[str]:
    """What listens (TCP) in the blocks this benchmark uses."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # LISTEN
            continue
        host_hex, port_hex = fields[1].split(":")
        host = str(ipaddress.IPv4Address(bytes.fromhex(host_hex)[::-1]))
        if host.startswith(OUR_BLOCKS):
            found.append(f"{host}:{int(port_hex, 16)}")
    return found


def sessions() -> dict[int, list[int]]:
    """Every process, by session: a service's session holds its workers too."""
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        found.setdefault(int(fields[3]), []).append(int(entry.name))
    return found


def listeners(host: str, port: int) -> int:
    """How many sockets listen on ``host:port``."""
    wanted = f"{ipaddress.IPv4Address(host).packed[::-1].hex().upper()}:{port:04X}"
    return sum(
        1
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1] == wanted and line.split()[3] == "0A"
    )


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class Group:
    """Processes measured together: each service's whole session."""

    def __init__(self, services: list[Any]) -> None:
        self.services = services

    def pids(self) -> list[int]:
        by_session = sessions()
        return [pid for s in self.services for pid in by_session.get(s.pid, [])]

    def sample(self) -> dict[str, Any]:
        rss = pss = 0
        cpu = 0.0
        pids = self.pids()
        files, cpus = {}, {}
        for pid in pids:
            with contextlib.suppress(OSError, BenchError):
                rss += rss_kib(pid)
                pss += pss_kib(pid)
                cpus[pid] = cpu_seconds(pid)
                cpu += cpus[pid]
                files[pid] = len(os.listdir(f"/proc/{pid}/fd"))
        return {
            "t": time.monotonic(),
            "rss_kib": rss,
            "pss_kib": pss,
            "cpu_s": cpu,
            "processes": len(pids),
            "open_files": files,
            "cpu_s_by_pid": cpus,
        }


#: The kernel's TCP counters (``/proc/net/netstat``) read around each phase.
#: They count every socket of the machine, but loopback at this scale is
#: this run's: a full accept queue (ListenOverflows), SYNs answered with a
#: cookie, retransmitted SYNs, TIME_WAIT not kept for want of buckets.
NETSTAT = (
    "ListenOverflows",
    "ListenDrops",
    "SyncookiesSent",
    "TCPReqQFullDoCookies",
    "TCPReqQFullDrop",
    "TCPSynRetrans",
    "TCPTimeouts",
    "TCPBacklogDrop",
    "TCPAbortOnMemory",
    "TCPTimeWaitOverflow",
)


def netstat() -> dict[str, int]:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            pairs = zip(names.split()[1:], values.split()[1:], strict=True)
            found = {k: int(v) for k, v in pairs if k in NETSTAT}
    return found


def netstat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def cpu_percent(before: dict[str, Any], after: dict[str, Any]) -> float:
    seconds = after["t"] - before["t"]
    return 100.0 * (after["cpu_s"] - before["cpu_s"]) / seconds if seconds > 0 else 0.0


def cpu_figures(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """CPU of each group sampled (the balancer, the clients, the front ends,
    and with terminated TLS the two wrappers) between samples, and what the
    kernel's TCP counters counted meanwhile."""
    names = [name for name in before if name != "netstat"]
    b, a = before["balancer"]["cpu_s_by_pid"], after["balancer"]["cpu_s_by_pid"]
    return {
        "cpu_percent": {n: cpu_percent(before[n], after[n]) for n in names},
        "cpu_seconds": {n: after[n]["cpu_s"] - before[n]["cpu_s"] for n in names},
        "balancer_cpu_seconds_by_pid": {p: a[p] - b.get(p, 0.0) for p in a},
        "netstat": netstat_delta(before["netstat"], after["netstat"]),
    }


def merge_histograms(reports: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Merge the client processes' histograms; percentiles as ocsim has them."""
    buckets: dict[tuple[int, int], int] = {}
    n, top = 0, 0
    for report in reports:
        h = report[key]
        n += h["n"]
        top = max(top, h["max_us"])
        for low, width, count in h["buckets"]:
            buckets[low, width] = buckets.get((low, width), 0) + count
    ordered = sorted(buckets.items())

    def percentile(p: float) -> float:
        if not n:
            return 0.0
        rank = min(n, max(1, int(p / 100 * n + 0.5)))
        seen = 0
        for (low, width), count in ordered:
            seen += count
            if seen >= rank:
                return min(float(top), low + (width - 1) / 2)
        return float(top)

    return {
        "n": n,
        "p50_us": percentile(50),
        "p90_us": percentile(90),
        "p99_us": percentile(99),
        "p999_us": percentile(99.9),
        "max_us": top,
    }


def add_counts(reports: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for report in reports:
        for key, value in report["counts"].items():
            total[key] = total.get(key, 0) + value
    return total


# ---------------------------------------------------------------- processes


class Clients:
    """One ``ocsim clients`` process, driven through its stdin and stdout."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path) -> None:
        self.name, self.log = name, log
        with log.open("wb") as err:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=cwd,
                start_new_session=True,
            )
        self.buffer = b""
        self.reports: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(line.encode() + b"\n")
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} has exited: {self.output()}") from None

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def next_report(
        self, event: str, deadline: float, watch: Any = None
    ) -> dict[str, Any]:
        """The next report of kind ``event``; raise past ``deadline``.

        ``watch()``, if given, is called every second or so meanwhile.
        """
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        while True:
            line, sep, rest = self.buffer.partition(b"\n")
            if sep:
                self.buffer = rest
                report = json.loads(line)
                self.reports.append(report)
                if report.get("event") == event:
                    return report
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {event} report in time")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if watch is not None:
                watch()
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(
                        f"{self.name} exited ({self.popen.poll()}): {self.output()}"
                    )
                self.buffer += chunk

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(WAIT)


class Fleet:
    """Every client process of one balancer's run, commanded together."""

    def __init__(self, members: list[Clients], watch: Any = None) -> None:
        self.members, self.watch = members, watch

    def command(self, line: str, event: str, timeout: float) -> list[dict[str, Any]]:
        for member in self.members:
            member.send(line)
        deadline = time.monotonic() + timeout
        return [m.next_report(event, deadline, self.watch) for m in self.members]


class Watchdog:
    """Stops a run whose balancer grows past ``--max-rss`` or whose processes die.

    The machine is shared: a balancer that runs away with its memory must
    not bring the kernel's OOM killer to other people's processes.
    """

    def __init__(self, limit_mib: float, group: Group, services: list[Any]) -> None:
        self.limit_kib, self.group, self.services = limit_mib * 1024, group, services
        self.last = 0.0
        self.peak_kib = 0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        check_alive(self.services)
        rss = 0
        for pid in self.group.pids():
            with contextlib.suppress(OSError, BenchError):
                rss += rss_kib(pid)
        self.peak_kib = max(self.peak_kib, rss)
        if rss > self.limit_kib:
            raise BenchError(
                f"the balancer's processes hold {rss / 1024:.0f} MiB, over "
                f"--max-rss {self.limit_kib / 1024:.0f} MiB: stopped"
            )


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


# ---------------------------------------------------------------- the bench


class Run:
    """The work directory, the simulator, and what each balancer is run with."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.ocsim = work / "ocsim"
        self.procs = args.workers or math.ceil(args.clients / 8000)
        #: ``workers = N`` is written when asked for, or when N > 1.
        self.write_workers = args.workers is not None or self.procs > 1
        source = args.ocsbal_source
        if source == "auto":
            source = str(BALANCER_SOURCE) if args.clients <= OCSBAL_SOURCE_MAX else ""
        self.ocsbal_source = "" if source == "none" else source
        #: Terminated TLS: the VIP's port is 5061, and TLS wrappers (HAProxy,
        #: not measured) sit on either side of the balancer.
        self.tls = args.port_type == "sips-terminate"
        self.vip_port = TLS_PORT if self.tls else PORT
        #: Where the clients connect: the VIP, or the TLS-originating wrapper.
        self.client_target = (TLS_WRAPPER, PORT) if self.tls else (VIP, PORT)
        #: Processes of each wrapper (each side's share of the descriptors).
        self.wrapper_procs = math.ceil(args.clients / TLS_WRAPPER_SHARE)

    def build(self) -> None:
        if self.tls:
            self.certificates()
        source = HERE / "ocsim.c"
        command = ["cc", "-O2", "-Wall", "-o", str(self.ocsim), str(source)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except FileNotFoundError:
            raise BenchError("no C compiler: apt-get install gcc libc6-dev") from None
        except subprocess.CalledProcessError as e:
            raise BenchError(f"cannot build {source}:\n{e.stderr.decode()}") from None

    def certificates(self) -> None:
        """RSA 2048, as OCS certificates are (and as bench/setups.py makes
        them): one authority for the pool's certificate, which the clients'
        wrapper checks, another for the front ends' (``[tls] trust`` and
        HAProxy's ``ca-file``)."""
        rsa = trustme.KeyType.RSA
        clients_ca, servers_ca = trustme.CA(key_type=rsa), trustme.CA(key_type=rsa)
        pool = clients_ca.issue_cert(FQDN, key_type=rsa)
        pool.private_key_and_cert_chain_pem.write_to_path(str(self.work / "pool.pem"))
        clients_ca.cert_pem.write_to_path(str(self.work / "clients-ca.pem"))
        for name, fe_name in FRONT_END_NAMES.items():
            cert = servers_ca.issue_cert(fe_name, key_type=rsa)
            cert.private_key_and_cert_chain_pem.write_to_path(
                str(self.work / f"{name}.pem")
            )
        servers_ca.cert_pem.write_to_path(str(self.work / "servers-ca.pem"))

    def start_front_ends(self, supervisor: Supervisor) -> list[Service]:
        return [
            supervisor.start(
                name,
                [str(self.ocsim), "serve", address, str(PORT), name, "1500", "1"],
                [(address, PORT)],
            )
            for name, address in FRONT_ENDS.items()
        ]

    # --- the TLS wrappers (terminated TLS only; not measured)

    def tls_server_side_config(self) -> str:
        """A process of the front ends' TLS: it ends TLS on each front end's
        address, port 5061, with that front end's certificate, and relays
        the plain SIP to ocsim on 5060."""
        sections = "".join(
            f"""listen tls-{name}
    bind {address}:{TLS_PORT} ssl crt {self.work / name}.pem no-tls-tickets
    maxconn {self.args.haproxy_maxconn}
    server {name} {address}:{PORT}
"""
            for name, address in FRONT_ENDS.items()
        )
        return self.wrapper_global() + sections

    def tls_client_side_config(self, index: int) -> str:
        """A process of the clients' TLS: plain SIP in on 127.0.200.50:5060,
        TLS out to the VIP's 5061, the pool's certificate checked (as Office
        Communicator does), no session resumed."""
        return (
            self.wrapper_global()
            + f"""listen tls-clients
    bind {TLS_WRAPPER}:{PORT}
    maxconn {self.args.haproxy_maxconn}
    source {TLS_WRAPPER_SOURCE + index}
    server vip {VIP}:{TLS_PORT} ssl verify required ca-file {self.work}/clients-ca.pem verifyhost {FQDN} sni str({FQDN}) no-ssl-reuse
"""  # noqa: E501
        )

    def wrapper_global(self) -> str:
        maxconn = self.args.haproxy_maxconn
        return f"""global
    nbthread 1
    maxconn {maxconn}
    tune.ssl.cachesize 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
"""

    def start_tls_wrappers(
        self, supervisor: Supervisor
    ) -> tuple[list[Service], list[Service]]:
        """The clients' and the front ends' TLS wrappers, all listening.

        Each side is ``wrapper_procs`` HAProxy processes of one thread,
        sharing its addresses with SO_REUSEPORT (HAProxy's default), as the
        measured HAProxy does: a process relays at most ``--haproxy-maxconn``
        connections in its 20,000 descriptors.
        """
        servers_side, clients_side = [], []
        for k in range(self.wrapper_procs):
            config = self.work / f"tls-servers-{k}.cfg"
            config.write_text(self.tls_server_side_config())
            servers_side.append(
                supervisor.start(
                    f"tls-servers-{k}", ["haproxy", "-db", "-f", str(config)]
                )
            )
            config = self.work / f"tls-clients-{k}.cfg"
            config.write_text(self.tls_client_side_config(k))
            clients_side.append(
                supervisor.start(
                    f"tls-clients-{k}", ["haproxy", "-db", "-f", str(config)]
                )
            )
        every = [*servers_side, *clients_side]
        addresses = [(TLS_WRAPPER, PORT)]
        addresses += [(address, TLS_PORT) for address in FRONT_ENDS.values()]
        for host, port in addresses:
            wait_listeners(every, host, port, self.wrapper_procs)
        return clients_side, servers_side

    # --- balancers

    def haproxy_config(self, index: int, threads: int) -> str:
        bind, tune = f"{VIP}:{PORT}", ""
        if self.tls:
            # As ocsbal: the pool's certificate, no session resumed or
            # ticket issued, each front end's certificate checked against
            # its name (sent as SNI) and the servers' authority; health
            # checks connect only, as ocsbal's [monitor] type = tcp.
            bind = f"{VIP}:{TLS_PORT} ssl crt {self.work}/pool.pem no-tls-tickets"
            tune = "\n    tune.ssl.cachesize 0"

        def server(name: str) -> str:
            address = f"{FRONT_ENDS[name]}:{self.vip_port}"
            line = f"    server {name} {address} check inter 5s"
            if self.tls:
                tls_name = FRONT_END_NAMES[name]
                line += (
                    f" ssl verify required ca-file {self.work}/servers-ca.pem"
                    f" verifyhost {tls_name} sni str({tls_name})"
                    " no-ssl-reuse no-check-ssl"
                )
            return line + "\n"

        servers = "".join(server(name) for name in FRONT_ENDS)
        maxconn = self.args.haproxy_maxconn
        return f"""global
    nbthread {threads}
    maxconn {maxconn}{tune}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen sip
    bind {bind}
    maxconn {maxconn}
    balance leastconn
    source {BALANCER_SOURCE + index}
{servers}"""

    def ocsbal_config(self) -> str:
        lines = [
            "[pool]",
            "name = poolscale",
            "fqdn = pool.ocsbal.test",
            f"vip = {VIP}",
            "kind = enterprise",
            "nat = full",
            "scheduler = least-connections",
            "idle_timeout = 1800",
        ]
        if self.ocsbal_source:
            lines.append(f"source = {self.ocsbal_source}")
        if self.write_workers:
            lines.append(f"workers = {self.procs}")
        port_type = "sips" if self.tls else self.args.port_type
        lines += ["", "[ports]", f"{self.vip_port} = {port_type}", ""]
        for name, address in FRONT_ENDS.items():
            lines += [f"[server:{name}]", f"address = {address}"]
            if self.tls:
                lines.append(f"tls_name = {FRONT_END_NAMES[name]}")
            lines.append("")
        lines += ["[monitor]", "type = tcp", f"ports = {self.vip_port}"]
        lines += ["interval = 5", ""]
        if self.tls:
            # inspect = yes, the default: the SIP decrypted is followed.
            lines += ["[tls]", "mode = terminate", "certificate = pool.pem"]
            lines += ["trust = servers-ca.pem", ""]
        return "\n".join(lines)

    def start_balancer(self, supervisor: Supervisor, kind: str) -> list[Service]:
        if kind == "haproxy":
            threads = 2 if self.procs == 1 else 1
            services = []
            for k in range(self.procs):
                config = self.work / f"haproxy-{k}.cfg"
                config.write_text(self.haproxy_config(k, threads))
                services.append(
                    supervisor.start(
                        f"haproxy-{k}", ["haproxy", "-db", "-f", str(config)]
                    )
                )
            wait_listeners(services, VIP, self.vip_port, self.procs)
            return services
        config = self.work / "pool.ini"
        config.write_text(self.ocsbal_config())
        twistd = [str(BIN / "twistd"), "--nodaemon", "--pidfile="]
        command = [*twistd, "ocsbal", "--config", str(config)]
        return [supervisor.start("ocsbal", command, [(VIP, self.vip_port)])]

    def balancer_shape(self, kind: str) -> dict[str, Any]:
        if kind == "haproxy":
            threads = 2 if self.procs == 1 else 1
            return {
                "processes": self.procs,
                "threads_each": threads,
                "maxconn_each": self.args.haproxy_maxconn,
                "port_type": self.args.port_type,
            }
        return {
            "workers": self.procs if self.write_workers else None,
            "source": self.ocsbal_source,
            "port_type": self.args.port_type,
        }

    # --- clients

    def client_options(self) -> list[str]:
        a = self.args
        return [
            *("--keepalive", str(a.keepalive), "--refresh", str(a.refresh)),
            *("--subscribe", str(a.subscribe), "--timeout", str(a.timeout)),
            *("--inflight", str(a.inflight)),
        ]

    def start_clients(
        self, supervisor: Supervisor, label: str, count: int, first_source: int
    ) -> Fleet:
        """``count`` clients in processes of at most ``--per-process``."""
        parts = split(count, math.ceil(count / self.args.per_process))
        members, source, first = [], first_source, 0
        for k, n in enumerate(parts):
            addresses = math.ceil(n / self.args.per_source)
            if source + addresses > len(CLIENT_SOURCES):
                raise BenchError("not enough client source addresses")
            host, port = self.client_target
            args = [str(self.ocsim), "clients", host, str(port), str(n)]
            args += [CLIENT_SOURCES[source], str(addresses), *self.client_options()]
            args += ["--first", str(first), "--seed", str(k + 1)]
            name = f"{label}-{k}"
            member = Clients(name, args, self.work / f"{name}.log", self.work)
            supervisor.services.append(member)  # type: ignore[arg-type]
            members.append(member)
            source += addresses
            first += n
        fleet = Fleet(members)
        deadline = time.monotonic() + WAIT
        for member in members:
            member.next_report("ready", deadline)
        return fleet


def front_end_stats(services: list[Service]) -> dict[str, dict[str, Any]]:
    """The last stats line of each front end."""
    stats = {}
    for service in services:
        lines = service.output(4000).strip().splitlines()
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                stats[service.name] = json.loads(line)
                break
    return stats


def wait_front_ends_idle(services: list[Service], timeout: float = 30) -> int:
    """Wait until no front end holds a connection; return how many are left."""
    deadline = time.monotonic() + timeout
    while True:
        left = sum(s.get("open", 0) for s in front_end_stats(services).values())
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(1)


def wait_listeners(services: list[Service], host: str, port: int, count: int) -> None:
    """Wait until ``count`` sockets listen on ``host:port`` (processes sharing
    it with SO_REUSEPORT); raise if ``services`` exit or it takes too long."""
    deadline = time.monotonic() + WAIT
    while listeners(host, port) < count:
        check_alive(services)
        if time.monotonic() > deadline:
            raise BenchError(
                f"only {listeners(host, port)} of {count} processes listen on "
                f"{host}:{port}:\n{services[0].output()}"
            )
        time.sleep(0.1)


def check_alive(services: list[Any]) -> None:
    for service in services:
        if service.popen.poll() is not None:
            raise BenchError(
                f"{service.name} exited with status {service.popen.returncode}:\n"
                f"{service.output()}"
            )


def phase_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    counts = add_counts(reports)
    return {
        "clients": sum(r["clients"] for r in reports),
        "registered": sum(r["registered"] for r in reports),
        "complete": all(r["complete"] for r in reports),
        "seconds": max(r["seconds"] for r in reports),
        "failures": sum(counts.get(k, 0) for k in FAILURES),
        "retries": counts.get("retries", 0),
        "attempts": counts.get("attempts", 0),
        "counts": counts,
        "register_rtt": merge_histograms(reports, "register"),
        "errnos": sorted({r["last_errno"] for r in reports if r["last_errno"]}),
    }


def window_summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    counts = add_counts(reports)
    return {
        "seconds": max(r["seconds"] for r in reports),
        "registered_end": sum(r["registered"] for r in reports),
        "registered_min": sum(r["registered_min"] for r in reports),
        "lost": sum(counts.get(k, 0) for k in LOST),
        "failures": sum(counts.get(k, 0) for k in FAILURES),
        "counts": counts,
        "keepalive_rtt": merge_histograms(reports, "keepalive"),
        "errnos": sorted({r["last_errno"] for r in reports if r["last_errno"]}),
    }


class BalancerRun:
    """One balancer's run: warm-up, ramp, steady state, storm.

    Its figures go to ``result`` as they come; whatever goes wrong is
    recorded there as ``error`` and ends this balancer's run only.  Its
    processes (balancer and clients) are stopped in any case.
    """

    def __init__(
        self,
        run: Run,
        supervisor: Supervisor,
        kind: str,
        index: int,
        front_ends: list[Service],
        *,
        wrappers: tuple[list[Service], list[Service]] = ([], []),
    ) -> None:
        self.run, self.args, self.supervisor = run, run.args, supervisor
        self.kind, self.index, self.front_ends = kind, index, front_ends
        #: The TLS wrappers, clients' side and front ends' side (terminated
        #: TLS only): sampled beside the balancer, never counted in it.
        self.wrappers = {
            "tls_clients_side": Group(wrappers[0]),
            "tls_servers_side": Group(wrappers[1]),
        }
        self.others = [*front_ends, *wrappers[0], *wrappers[1]]
        self.result: dict[str, Any] = {
            "balancer": kind,
            "shape": run.balancer_shape(kind),
        }
        self.balancer: list[Service] = []
        self.fleets: list[Fleet] = []
        self.group, self.sims = Group([]), Group([])
        self.servers = Group(front_ends)
        self.watchdog = Watchdog(self.args.max_rss, self.group, self.others)

    def __call__(self) -> dict[str, Any]:
        try:
            self.start()
            self.warm_up()
            fleet = self.ramp()
            self.steady(fleet)
            if self.args.storm:
                self.storm(fleet)
        except BenchError as e:
            self.result["error"] = str(e)
            print(f"[{self.kind}] FAILED: {e}", flush=True)
        finally:
            self.result["rss_kib_peak_watched"] = self.watchdog.peak_kib
            self.result["logs"] = {s.name: s.output(1500) for s in self.balancer}
            for fleet in self.fleets:
                self.stop_fleet(fleet)
            for service in self.balancer:
                self.supervisor.stop(service)
        return self.result

    def samples(self) -> dict[str, dict[str, Any]]:
        """The balancer's, the clients', the front ends' (and the TLS
        wrappers', if any); the kernel's counters."""
        found = {
            "balancer": self.group.sample(),
            "clients": self.sims.sample(),
            "front_ends": self.servers.sample(),
        }
        if self.run.tls:
            found.update({name: g.sample() for name, g in self.wrappers.items()})
        found["netstat"] = netstat()
        return found

    def stop_fleet(self, fleet: Fleet) -> None:
        for member in fleet.members:
            if member in self.supervisor.services:
                self.supervisor.services.remove(member)  # type: ignore[arg-type]
            member.stop()

    def clients(self, label: str, count: int, first_source: int) -> Fleet:
        fleet = self.run.start_clients(self.supervisor, label, count, first_source)
        fleet.watch = self.watchdog
        self.fleets.append(fleet)
        return fleet

    def start(self) -> None:
        left = wait_front_ends_idle(self.front_ends)
        if left:
            raise BenchError(f"the front ends still hold {left} connections")
        self.balancer = self.run.start_balancer(self.supervisor, self.kind)
        self.group.services = self.balancer
        self.watchdog.services = [*self.balancer, *self.others]
        print(f"[{self.kind}] started: {len(self.balancer)} process(es)", flush=True)

    def warm_up(self) -> None:
        """200 clients, from the last client addresses (one a balancer)."""
        source = len(CLIENT_SOURCES) - 1 - self.index
        warm = self.clients(f"{self.kind}-warmup", WARMUP_CLIENTS, source)
        summary = phase_summary(warm.command("connect 0 30", "connect", 45))
        self.result["warm_up"] = summary
        self.stop_fleet(warm)
        self.fleets.remove(warm)
        if not summary["complete"]:
            raise BenchError(
                f"warm-up: {summary['registered']} of {WARMUP_CLIENTS} clients "
                f"registered in 30 s ({summary['failures']} failures)"
            )
        time.sleep(2)
        self.result["idle"] = self.group.sample()

    def ramp(self) -> Fleet:
        """Every client, at --rate; each balancer's from addresses of its own."""
        args = self.args
        per_run = sum(
            math.ceil(n / args.per_source)
            for n in split(args.clients, math.ceil(args.clients / args.per_process))
        )
        label = f"{self.kind}-clients"
        fleet = self.clients(label, args.clients, self.index * per_run)
        self.sims.services = fleet.members
        self.watchdog.services += fleet.members
        rate = args.rate / len(fleet.members)
        timeout = args.clients / args.rate * 2 + 60
        print(
            f"[{self.kind}] connecting {args.clients} clients at {args.rate:g}/s "
            f"({len(fleet.members)} client processes)",
            flush=True,
        )
        before = self.samples()
        reports = fleet.command(
            f"connect {rate:g} {timeout:g}", "connect", timeout + 30
        )
        ramp = phase_summary(reports)
        ramp.update(cpu_figures(before, self.samples()))
        self.result["ramp"] = ramp
        print(
            f"[{self.kind}] ramp: {ramp['registered']}/{ramp['clients']} registered "
            f"in {ramp['seconds']:.1f} s, {ramp['failures']} failures",
            flush=True,
        )
        if not ramp["registered"]:
            raise BenchError("no client registered")
        return fleet

    def steady(self, fleet: Fleet) -> None:
        time.sleep(2)
        fleet.command("stats", "stats", 30)
        before = self.samples()
        samples = []
        end = time.monotonic() + self.args.steady
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            self.watchdog()
            if len(samples) < (time.monotonic() - before["balancer"]["t"]) / 5:
                samples.append(self.group.sample())
        after = self.samples()
        steady = window_summary(fleet.command("stats", "stats", 30))
        fe = front_end_stats(self.front_ends)
        held = steady["registered_min"]
        idle = self.result["idle"]
        ours = after["balancer"]
        steady.update(
            {
                **cpu_figures(before, after),
                "balancer": ours,
                "rss_kib_max": max(s["rss_kib"] for s in [*samples, ours]),
                "front_ends_open": {name: s.get("open") for name, s in fe.items()},
                "rss_kib_per_connection": (ours["rss_kib"] - idle["rss_kib"]) / held
                if held
                else None,
                "pss_kib_per_connection": (ours["pss_kib"] - idle["pss_kib"]) / held
                if held
                else None,
            }
        )
        if self.run.tls:
            steady["tls_wrappers_rss_kib"] = {
                name: after[name]["rss_kib"] for name in self.wrappers
            }
        self.result["steady"] = steady
        rtt = steady["keepalive_rtt"]
        print(
            f"[{self.kind}] steady {steady['seconds']:.0f} s: held {held}, lost "
            f"{steady['lost']}, keep-alive p50 {rtt['p50_us']:.0f} us "
            f"p99 {rtt['p99_us']:.0f} us",
            flush=True,
        )

    def storm(self, fleet: Fleet) -> None:
        """Every client reconnects at once; then a short check that all stay."""
        timeout = self.args.storm_timeout
        before = self.samples()
        summary = phase_summary(
            fleet.command(f"storm {timeout:g}", "storm", timeout + 30)
        )
        after = self.samples()
        summary.update(cpu_figures(before, after))
        summary["rss_kib_after"] = after["balancer"]["rss_kib"]
        self.result["storm"] = summary
        print(
            f"[{self.kind}] storm: {summary['registered']}/{summary['clients']} "
            f"registered again in {summary['seconds']:.2f} s, "
            f"{summary['failures']} failures, {summary['retries']} retries",
            flush=True,
        )
        fleet.command("stats", "stats", 30)
        end = time.monotonic() + min(10.0, self.args.steady)
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            self.watchdog()
        self.result["after_storm"] = window_summary(fleet.command("stats", "stats", 30))


# ------------------------------------------------------------------- report


def row(label: str, results: list[dict[str, Any]], fn: Any) -> str:
    cells = []
    for r in results:
        try:
            cells.append(str(fn(r)))
        except (KeyError, TypeError, ZeroDivisionError):
            cells.append("-")
    return f"{label:<44}" + "".join(f"{c:>26}" for c in cells)


def table(results: list[dict[str, Any]]) -> str:
    def shape(r: dict[str, Any]) -> str:
        s = r["shape"]
        if r["balancer"] == "haproxy":
            tls = ", TLS" if s.get("port_type") == "sips-terminate" else ""
            return f"{s['processes']} x {s['threads_each']} thread(s){tls}"
        processes = r["idle"]["processes"]
        workers = s["workers"] or "omitted"
        port = "TLS" if s["port_type"] == "sips-terminate" else s["port_type"]
        return f"{port}, workers {workers}: {processes} proc."

    def cpu(phase: str) -> Any:
        return lambda r: (
            f"{r[phase]['cpu_percent']['balancer']:.1f} "
            f"({r[phase]['cpu_seconds']['balancer']:.1f} s)"
        )

    def sims(phase: str) -> Any:
        return lambda r: (
            f"{r[phase]['cpu_percent']['clients']:.0f} / "
            f"{r[phase]['cpu_percent']['front_ends']:.0f}"
        )

    def wrappers(phase: str) -> Any:
        return lambda r: (
            f"{r[phase]['cpu_percent']['tls_clients_side']:.0f} / "
            f"{r[phase]['cpu_percent']['tls_servers_side']:.0f}"
        )

    rtt = "keepalive_rtt"
    lines = [
        row("", results, lambda r: r["balancer"]),
        row("error", results, lambda r: r.get("error", "none")[:24]),
        row("balancer processes", results, shape),
        row("clients", results, lambda r: r["ramp"]["clients"]),
        row(
            "ramp: registered, seconds",
            results,
            lambda r: f"{r['ramp']['registered']}, {r['ramp']['seconds']:.1f}",
        ),
        row("ramp: failures / retries", results, lambda r: _fr(r["ramp"])),
        row("ramp: balancer CPU, % of a core (CPU s)", results, cpu("ramp")),
        row("ramp: TLS wrappers' CPU, %: clients'/FEs'", results, wrappers("ramp")),
        row(
            "steady: held (fewest) / at end",
            results,
            lambda r: (
                f"{r['steady']['registered_min']} / {r['steady']['registered_end']}"
            ),
        ),
        row("steady: connections lost", results, lambda r: r["steady"]["lost"]),
        row(
            "steady: front ends, fewest-most",
            results,
            lambda r: "{}-{}".format(
                min(r["steady"]["front_ends_open"].values()),
                max(r["steady"]["front_ends_open"].values()),
            ),
        ),
        row(
            "memory: RSS idle -> held, MiB",
            results,
            lambda r: (
                f"{r['idle']['rss_kib'] / 1024:.0f} -> "
                f"{r['steady']['balancer']['rss_kib'] / 1024:.0f}"
            ),
        ),
        row(
            "memory: KiB per connection, RSS (PSS)",
            results,
            lambda r: (
                f"{r['steady']['rss_kib_per_connection']:.1f} "
                f"({r['steady']['pss_kib_per_connection']:.1f})"
            ),
        ),
        row("steady: balancer CPU, % of a core (CPU s)", results, cpu("steady")),
        row("steady: clients / front ends CPU, %", results, sims("steady")),
        row("steady: TLS wrappers' CPU, %: clients'/FEs'", results, wrappers("steady")),
        row(
            "steady: TLS wrappers' RSS, MiB",
            results,
            lambda r: " / ".join(
                f"{k / 1024:.0f}" for k in r["steady"]["tls_wrappers_rss_kib"].values()
            ),
        ),
        row(
            "keep-alive RTT p50 / p99 / max, us",
            results,
            lambda r: (
                f"{r['steady'][rtt]['p50_us']:.0f} / "
                f"{r['steady'][rtt]['p99_us']:.0f} / {r['steady'][rtt]['max_us']}"
            ),
        ),
        row("keep-alives timed", results, lambda r: r["steady"][rtt]["n"]),
        row(
            "storm: all registered again, seconds",
            results,
            lambda r: (
                f"{r['storm']['seconds']:.2f}"
                + ("" if r["storm"]["complete"] else " (NOT ALL)")
            ),
        ),
        row("storm: failures / retries", results, lambda r: _fr(r["storm"])),
        row(
            "storm: listen overflows / SYN retransmits",
            results,
            lambda r: (
                f"{r['storm']['netstat']['ListenOverflows']} / "
                f"{r['storm']['netstat']['TCPSynRetrans']}"
            ),
        ),
        row(
            "storm: REGISTER answered p50 / p99, ms",
            results,
            lambda r: (
                f"{r['storm']['register_rtt']['p50_us'] / 1000:.0f} / "
                f"{r['storm']['register_rtt']['p99_us'] / 1000:.0f}"
            ),
        ),
        row("storm: balancer CPU, % of a core (CPU s)", results, cpu("storm")),
        row("storm: clients / front ends CPU, %", results, sims("storm")),
        row("storm: TLS wrappers' CPU, %: clients'/FEs'", results, wrappers("storm")),
        row(
            "after storm: held (fewest), lost",
            results,
            lambda r: (
                f"{r['after_storm']['registered_min']}, {r['after_storm']['lost']}"
            ),
        ),
    ]
    return "\n".join(lines)


def _fr(phase: dict[str, Any]) -> str:
    return f"{phase['failures']} / {phase['retries']}"


# --------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=4000, help="simulated clients")
    p.add_argument("--balancers", default="haproxy,ocsbal", help="in this order")
    p.add_argument(
        "--workers",
        type=int,
        help="ocsbal's [pool] workers (written whenever given) and the HAProxy "
        "processes (default: clients / 8000, rounded up; no workers key if 1)",
    )
    p.add_argument("--steady", type=float, help="seconds (default 30; 600 at 100,000)")
    p.add_argument("--keepalive", type=float, default=30, help="seconds between pings")
    p.add_argument("--refresh", type=float, default=300, help="REGISTER refresh, s")
    p.add_argument("--subscribe", type=float, default=600, help="SUBSCRIBE every ~s")
    p.add_argument("--rate", type=float, default=1000, help="new connections/s, all")
    p.add_argument(
        "--port-type",
        choices=["sip", "sips", "tcp", "sips-terminate"],
        default="sip",
        help="ocsbal's VIP port: sip (followed), sips (passed through: the "
        "clients' plain SIP is relayed as TLS would be, unread), tcp, or "
        "sips-terminate: TLS on 5061, ended by the balancer (both of them) and "
        "begun again to each front end, with HAProxy wrappers, not measured, "
        "turning the clients' and front ends' plain SIP into TLS",
    )
    p.add_argument("--timeout", type=float, default=10, help="answer timeout, s")
    p.add_argument(
        "--storm", action=argparse.BooleanOptionalAction, default=True, help="storm"
    )
    p.add_argument("--storm-timeout", type=float, default=120, help="seconds")
    p.add_argument(
        "--inflight", type=int, default=2000, help="connecting at once, a process"
    )
    p.add_argument("--per-process", type=int, default=12000, help="clients a process")
    p.add_argument("--per-source", type=int, default=2000, help="clients an address")
    p.add_argument("--haproxy-maxconn", type=int, default=9900, help="a process")
    p.add_argument(
        "--sysctl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise somaxconn and tcp_max_syn_backlog for the run",
    )
    p.add_argument(
        "--ocsbal-source",
        default="auto",
        help=f"ocsbal's [pool] source: an address, none, or auto "
        f"({BALANCER_SOURCE} up to {OCSBAL_SOURCE_MAX:,} clients, none above)",
    )
    p.add_argument(
        "--max-rss",
        type=float,
        default=4096,
        help="MiB: a balancer whose processes hold more is stopped",
    )
    p.add_argument("--output", type=Path, default=Path("/tmp/ocsbal-pool-scale"))
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.steady is None:
        args.steady = 600.0 if args.clients >= 100000 else 30.0
    args.balancers = [b.strip() for b in args.balancers.split(",") if b.strip()]
    for b in args.balancers:
        if b not in ("haproxy", "ocsbal"):
            p.error(f"unknown balancer {b!r}: haproxy or ocsbal")
    if args.clients < 1 or args.per_process < 1 or args.per_source < 1:
        p.error("--clients, --per-process and --per-source must be positive")
    if args.per_process > 19000:
        p.error("--per-process: at most 19,000 (20,000 files a process)")
    return args


def git_state() -> dict[str, Any]:
    """The commit measured, and whether src/ differs from it."""

    def git(*words: str) -> str:
        return subprocess.run(
            ["git", "-C", str(HERE.parent), *words],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_changed": changed.splitlines()}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "kernel": platform.release(),
        "haproxy": subprocess.run(
            ["haproxy", "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split("\n")[0],
        "files_limit": raise_fd_limit(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    stop_on_signals()
    busy = listening_on_our_addresses()
    if busy:
        raise BenchError(f"something already listens on our addresses: {busy}")
    if shutil.which("haproxy") is None and "haproxy" in args.balancers:
        raise BenchError("no haproxy: apt-get install haproxy")
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report["machine"] = machine()
    report["git"] = git_state()
    report["options"] = {k: str(v) for k, v in vars(args).items()}
    restore, notes = raise_sysctls(args.sysctl)
    report["sysctl"] = {name: read_sysctl(name) for name in SYSCTL_RECORD}
    report["sysctl_notes"] = notes
    work = Path(tempfile.mkdtemp(prefix="ocsbal-pool-scale-"))
    results: list[dict[str, Any]] = []
    try:
        run = Run(args, work)
        run.build()
        with Supervisor(work) as supervisor:
            front_ends = run.start_front_ends(supervisor)
            wrappers: tuple[list[Service], list[Service]] = ([], [])
            if run.tls:
                wrappers = run.start_tls_wrappers(supervisor)
            for index, kind in enumerate(args.balancers):
                balancer = BalancerRun(
                    run, supervisor, kind, index, front_ends, wrappers=wrappers
                )
                results.append(balancer())
            report["front_ends"] = front_end_stats(front_ends)
    finally:
        restore_sysctls(restore)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["results"] = results
    print()
    print(table(results))
    args.output.mkdir(parents=True, exist_ok=True)
    name = f"pool_scale-{args.clients}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (args.output / name).write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {args.output / name}")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"{r['balancer']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"pool_scale: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"pool_scale: stopped ({e})", file=sys.stderr)
        sys.exit(1)
