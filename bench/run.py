"""Measure ocsbal side by side with HAProxy and ``twistd portforward``; print a table.

``make bench`` runs this after installing its tools.  Everything runs on
this machine, on loopback (127.0.60.0/24, see bench/setups.py), and every
path relays to the same servers on 127.0.60.11:

- **direct**: no balancer, the ceiling;
- **haproxy**: TCP mode, one thread, ``balance leastconn``; ``ssl`` on its
  bind and server lines for TLS;
- **portforward**: ``twistd portforward``, Twisted's own relay;
- **ocsbal**: ``twistd ocsbal`` on a one-server pool, on ``tcp`` ports,
  ``sip`` ports (SIP followed) and ``sips`` ports whose TLS it terminates
  and re-encrypts (SIP followed);
- **ocsbal-relay**, for the SIP tests: ocsbal relaying the same SIP without
  following it, on its ``tcp`` port, and for SIP over TLS a second ocsbal
  whose pool has ``[tls] inspect = no``.

Each test runs once per round on each of its paths, the paths taking turns
(each round starts with the next one), and each figure is the median of its
rounds.  The load generators share the machine's cores with the balancer
and the servers, so compare ratios, not absolute numbers.  docs/benchmarks.md
says how each figure is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import loads
import report
from conversations import fewest_seen
from setups import (
    ADMIN,
    CONVERSATIONS,
    HTTP,
    HTTPS,
    IDLE,
    IDLE_TLS,
    REGISTRAR,
    SIP,
    SIPS,
    WORKERS,
    WORKERS_ADMIN,
    Address,
    Work,
    balancer,
)
from supervise import (
    BenchError,
    Supervisor,
    cpu_seconds,
    raise_fd_limit,
    stop_on_signals,
    tree_cpu_seconds,
)

HERE = Path(__file__).parent
DOCS_CHART = HERE.parent / "docs" / "img" / "benchmarks.png"
ALL_PATHS = report.PATHS
#: The Debian package of each tool the tests run.
PACKAGES = {
    "wrk": "wrk",
    "haproxy": "haproxy",
    "nginx": "nginx-light",
    "sipp": "sip-tester",
    "kamailio": "kamailio",
    "cc": "gcc",
}


@dataclass(frozen=True)
class Test:
    """A measurement made once a round on each of ``paths``."""

    key: str
    paths: tuple[str, ...]
    #: Records its figures in the results; returns what it saw, for the log.
    measure: Callable[[Bench, str], str]
    tools: tuple[str, ...] = ("wrk", "haproxy", "nginx", "cc")


class Bench:
    """The running benchmark: options, services, results."""

    def __init__(self, options: argparse.Namespace, work: Work) -> None:
        self.options = options
        self.work = work
        self.results = report.Results()
        self.supervisor = Supervisor(work.dir)
        self.started = time.monotonic()
        self._latency_rate: float | None = None
        self._sipp_runs = 0

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:4.0f} s] {text}", file=sys.stderr)

    # --------------------------------------------------------------- tests

    def messages(self, path: str) -> str:
        rate = loads.wrk(self.work.dir, HTTP[path], self.options.seconds)
        return self._rate("messages", path, rate, "req/s")

    def connections(self, path: str) -> str:
        rate = loads.wrk(self.work.dir, HTTP[path], self.options.seconds, close=True)
        return self._rate("connections", path, rate, "conn/s")

    def bulk(self, path: str) -> str:
        speed = loads.bulk(HTTP[path], self.work.bulk_bytes)
        self.results.add("bulk", path, speed)
        return f"{speed:,.0f} MB/s"

    def latency(self, path: str) -> str:
        rate = self.latency_rate()
        summary = loads.loadgen(
            self.work.loadgen,
            HTTP[path],
            self.work.dir / "http-request",
            self.options.latency_seconds,
            rate=rate,
            warmup=self.options.warmup,
        )
        self.results.add("latency_p50", path, summary["p50_us"])
        self.results.add("latency_p99", path, summary["p99_us"])
        runs = self.results.extra.setdefault("latency_runs", {})
        runs.setdefault(path, []).append(summary)
        behind = summary["late"] > summary["responses"] / 2 or summary["unanswered"]
        return (
            f"p50 {summary['p50_us']:,.0f} us, p99 {summary['p99_us']:,.0f} us at "
            f"{summary['rate']:,.0f}/s{' (could not keep up)' if behind else ''}"
        )

    def idle_memory(self, path: str) -> str:
        balancer = self.work.start_idle_balancer(self.supervisor, path)
        try:
            per = loads.idle_memory(balancer.pid, IDLE[path], self.options.idle)
        finally:
            self.supervisor.stop(balancer)
        self.results.add("idle_memory", path, per)
        return f"{per:,.1f} KiB a connection"

    def idle_tls_memory(self, path: str) -> str:
        balancer = self.work.start_idle_balancer(self.supervisor, path, tls=True)
        try:
            count = self.options.idle_tls
            per = loads.idle_memory(balancer.pid, IDLE_TLS[path], count, tls=True)
        finally:
            self.supervisor.stop(balancer)
        self.results.add("idle_tls_memory", path, per)
        return f"{per:,.1f} KiB a connection"

    def workers(self, path: str) -> str:  # noqa: ARG002 -- ocsbal's test only
        """ocsbal with one worker, then two, at a fixed rate below capacity.

        The rate is half of one ocsbal process's message rate, measured
        by the message test in the same run (or :data:`WORKERS_RATE`).

        Records the CPU seconds (all processes) per 10,000 requests of each,
        their ratio, and how the kernel shared the connections between the
        two workers.
        """
        capacity = self.results.median("messages", "ocsbal")
        rate = WORKERS_RATE if capacity is None else round(capacity / 2, -2)
        cpu, shares = {}, []
        for count in WORKERS:
            balancer = self.work.start_workers_balancer(self.supervisor, count)
            try:
                with ThreadPoolExecutor(1) as pool:
                    used = tree_cpu_seconds(balancer.pid)
                    run = pool.submit(
                        loads.loadgen,
                        self.work.loadgen,
                        WORKERS[count],
                        self.work.dir / "http-request",
                        self.options.seconds,
                        rate=rate,
                        connections=WORKERS_CONNECTIONS,
                    )
                    time.sleep(self.options.seconds / 2)
                    if count > 1:
                        shares = [w["connections"] for w in _workers_listed()]
                    summary = run.result()
                    cpu[count] = (
                        (tree_cpu_seconds(balancer.pid) - used)
                        / summary["responses"]
                        * 10_000
                    )
            finally:
                self.supervisor.stop(balancer)
            if summary["errors"] or summary["unanswered"]:
                raise BenchError(f"workers = {count}: {summary}")
        ratio = cpu[2] / cpu[1]
        even = WORKERS_CONNECTIONS / len(shares)
        worst = max(abs(n - even) / even for n in shares)
        self.results.extra.setdefault("workers", []).append(
            {
                "rate": rate,
                "cpu_per_10k": cpu,
                "cpu_ratio": ratio,
                "connections_by_worker": shares,
                "worst_share_off_even": worst,
            }
        )
        return (
            f"at {rate:,.0f} req/s: 1 worker {cpu[1]:.2f}, 2 workers {cpu[2]:.2f} "
            f"CPU s per 10,000 (x{ratio:.2f}); connections by worker {shares} "
            f"({worst:.0%} off even at worst)"
        )

    def sip(self, path: str, conversation: str, tls: bool) -> str:
        """Play ``conversation`` over ``path``, SIP over TLS if ``tls``.

        Records the round trips a second and the balancer's CPU seconds per
        10,000 of them; on a port that follows SIP, checks that it did.
        """
        figure = f"{'sips' if tls else 'sip'}_{conversation}"
        address = (SIPS if tls else SIP)[conversation][path]
        measured = balancer(path, address, tls)
        pid = self.supervisor.named(measured).pid if measured else None
        before = _sip_metrics() if path == "ocsbal" else {}
        used = cpu_seconds(pid) if pid else 0.0
        summary = loads.loadgen(
            self.work.loadgen,
            address,
            self.work.dir / f"{conversation}-client",
            self.options.seconds,
            connections=SIP_CONNECTIONS,
        )
        said = f"{summary['rate']:,.0f} round trips/s"
        if summary["errors"] or not summary["responses"]:
            raise BenchError(f"{figure} over {path}: {summary}")
        self.results.add(figure, path, summary["rate"])
        if pid:
            per = (cpu_seconds(pid) - used) / summary["responses"] * 10_000
            self.results.add(f"{figure}_cpu", path, per)
            said += f", {measured} {per:.2f} CPU s per 10,000"
        if path == "ocsbal":
            turns = CONVERSATIONS[conversation]
            least = fewest_seen(turns, int(summary["responses"]), SIP_CONNECTIONS)
            said += "; " + self._inspected(before, _sip_metrics(), least)
        return said

    def sipp(self, path: str) -> str:
        source = loads.sipp_source(self._sipp_runs)
        self._sipp_runs += 1
        calls = loads.sipp(self.work.dir, REGISTRAR[path], self.options.calls, source)
        self.results.add("sipp", path, calls.rate)
        self.results.add("sipp_failed", path, calls.failed)
        return f"{calls.rate:,.0f} calls/s, {calls.failed} failed"

    def tls_handshakes(self, path: str) -> str:
        rate = loads.wrk(
            self.work.dir, HTTPS[path], self.options.seconds, close=True, tls=True
        )
        return self._rate("tls_handshakes", path, rate, "handshakes/s")

    def tls_bulk(self, path: str) -> str:
        speed = loads.bulk(HTTPS[path], self.work.bulk_bytes, tls=True)
        self.results.add("tls_bulk", path, speed)
        return f"{speed:,.0f} MB/s"

    # ------------------------------------------------------------- helpers

    def _rate(self, figure: str, path: str, rate: loads.Rate, unit: str) -> str:
        self.results.add(figure, path, rate.rate)
        if not rate.errors:
            return f"{rate.rate:,.0f} {unit}"
        errors = self.results.extra.setdefault("errors", {})
        key = f"{figure} {path}"
        errors[key] = errors.get(key, 0) + rate.errors
        return f"{rate.rate:,.0f} {unit}, {rate.errors} errors"

    def latency_rate(self) -> float:
        """Half HAProxy's message rate: measured by the message test, or now."""
        if self._latency_rate is None:
            capacity = self.results.median("messages", "haproxy")
            if capacity is None:
                seconds = self.options.seconds
                capacity = loads.wrk(self.work.dir, HTTP["haproxy"], seconds).rate
            self._latency_rate = round(capacity / 2, -2)
            self.results.extra["latency_rate"] = self._latency_rate
            self.log(f"latency: fixed rate {self._latency_rate:,.0f} requests/s")
        return self._latency_rate

    def _inspected(
        self, before: dict[str, float], after: dict[str, float], least: tuple[int, int]
    ) -> str:
        """Check that ocsbal followed the run: ``least`` REGISTERs and 2xx seen."""

        def delta(prefix: str) -> float:
            return sum(
                value - before.get(name, 0.0)
                for name, value in after.items()
                if name.startswith(prefix)
            )

        requests = delta('ocsbal_sip_requests_total{method="REGISTER"')
        responses = delta('ocsbal_sip_responses_total{class="2xx"')
        gave_up = delta("ocsbal_sip_inspections_given_up_total")
        if gave_up or requests < least[0] or responses < least[1]:
            raise BenchError(
                f"ocsbal did not follow the SIP test's messages: {requests:.0f} "
                f"REGISTERs and {responses:.0f} 2xx seen of at least {least[0]} "
                f"and {least[1]} carried, {gave_up:.0f} inspections given up"
            )
        self.results.extra.setdefault("sip_inspected", []).append(
            {
                "registers": requests,
                "responses_2xx": responses,
                "at_least": least,
                "given_up": gave_up,
            }
        )
        return f"ocsbal saw {requests:,.0f} REGISTERs, {responses:,.0f} 2xx"

    # ----------------------------------------------------------------- run

    def run(self, tests: list[Test]) -> None:
        paths = sorted({p for t in tests for p in t.paths if p in ALL_PATHS})
        registrar = any(t.key == "sipp" for t in tests)
        _check_free()
        self.work.start_servers(self.supervisor, registrar)
        self.work.start_balancers(self.supervisor, paths)
        if any(t.key.startswith("sips_") for t in tests):
            self.work.start_tls_sip(self.supervisor)
        self.log("servers and balancers are up")
        rounds = self.options.rounds
        for test in tests:
            for round_ in range(rounds):
                turn = round_ % len(test.paths)
                for path in test.paths[turn:] + test.paths[:turn]:
                    for service in self.supervisor.services:
                        service.check()
                    said = test.measure(self, path)
                    self.log(f"{test.key} {round_ + 1}/{rounds} {path}: {said}")


def _check_free() -> None:
    """Fail now if anything already listens where the benchmark will."""
    wanted: set[Address] = {ADMIN, WORKERS_ADMIN, *WORKERS.values()}
    tables = (HTTP, HTTPS, REGISTRAR, IDLE, IDLE_TLS, *SIP.values(), *SIPS.values())
    for table in tables:
        wanted.update(table.values())
    for address in sorted(wanted):
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(address) == 0:
                raise BenchError(
                    f"something already listens on {address[0]}:{address[1]}; "
                    "is another benchmark running?"
                )


def _workers_listed() -> list[dict[str, Any]]:
    """The workers test's ``/api/workers``."""
    host, port = WORKERS_ADMIN
    with urllib.request.urlopen(f"http://{host}:{port}/api/workers", timeout=10) as r:
        return list(json.loads(r.read()))


def _sip_metrics() -> dict[str, float]:
    """ocsbal's ``ocsbal_sip_*`` samples, from its admin interface."""
    url = f"http://{ADMIN[0]}:{ADMIN[1]}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    samples = (line.rpartition(" ") for line in text.splitlines())
    return {
        name: float(value)
        for name, _, value in samples
        if name.startswith("ocsbal_sip_")
    }


TCP = ("direct", "haproxy", "portforward", "ocsbal")
TLS = ("direct", "haproxy", "ocsbal")
SIP_PATHS = ("direct", "haproxy", "portforward", "ocsbal-relay", "ocsbal")
SIPS_PATHS = ("direct", "haproxy", "ocsbal-relay", "ocsbal")
SIP_TOOLS = ("haproxy", "cc")
#: Connections each SIP test keeps busy.
SIP_CONNECTIONS = 50
#: Connections of the workers test: enough for the kernel's spread to show.
WORKERS_CONNECTIONS = 200
#: Its rate, requests a second, unless the message test measured ocsbal's
#: capacity this run (then half of that).
WORKERS_RATE = 5000


def _sip_test(conversation: str, tls: bool) -> Test:
    def measure(bench: Bench, path: str) -> str:
        return bench.sip(path, conversation, tls)

    key = f"{'sips' if tls else 'sip'}_{conversation}"
    return Test(key, SIPS_PATHS if tls else SIP_PATHS, measure, SIP_TOOLS)


TESTS = [
    Test("messages", TCP, Bench.messages),
    Test("connections", TCP, Bench.connections),
    Test("bulk", TCP, Bench.bulk),
    Test("latency", TCP, Bench.latency),
    *(_sip_test(name, tls=False) for name in CONVERSATIONS),
    *(_sip_test(name, tls=True) for name in CONVERSATIONS),
    Test("sipp", TCP, Bench.sipp, ("sipp", "kamailio", *SIP_TOOLS)),
    Test("tls_handshakes", TLS, Bench.tls_handshakes),
    Test("tls_bulk", TLS, Bench.tls_bulk),
    Test("idle_memory", ("haproxy", "portforward", "ocsbal"), Bench.idle_memory),
    Test("idle_tls_memory", ("haproxy", "ocsbal"), Bench.idle_tls_memory),
    Test("workers", ("ocsbal",), Bench.workers),
]


# ------------------------------------------------------------------ machine


def _first_line(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout + done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else ""


def machine() -> dict[str, Any]:
    """What ran the benchmark, and the versions of what it measured."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1])
    system = "unknown"
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            system = line.split("=", 1)[1].strip().strip('"')
    commit = _first_line(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"])
    changed = _first_line(["git", "-C", str(HERE), "status", "--porcelain", "../src"])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        # Other work on the machine when the benchmark started.
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "memory_gib": round(memory / 2**20, 1),
        "kernel": platform.release(),
        "system": system,
        "versions": {
            "ocsbal": f"{version('ocsbal')} (commit {commit}"
            + (", with src/ changes not committed)" if changed else ")"),
            "python": platform.python_version(),
            "twisted": version("twisted"),
            "openssl": ssl.OPENSSL_VERSION,
            "haproxy": _first_line(["haproxy", "-v"]),
            "nginx": _first_line(["nginx", "-v"]),
            "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0],
            "sipp": _first_line(["sipp", "-v"]),
            "kamailio": _first_line(["kamailio", "-v"]),
        },
    }


# --------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--rounds", type=int, help="runs of each test on each path (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one short round of everything; writes no results "
        "unless --output is given",
    )
    parser.add_argument(
        "--tests", help="comma-separated, from: " + ", ".join(t.key for t in TESTS)
    )
    parser.add_argument("--seconds", type=float, help="per rate test (default 5)")
    parser.add_argument(
        "--latency-seconds", type=float, help="measured per latency test (default 5)"
    )
    parser.add_argument("--megabytes", type=int, help="bulk size (default 100)")
    parser.add_argument(
        "--idle", type=int, help="idle connections per balancer (default 8000)"
    )
    parser.add_argument(
        "--idle-tls",
        type=int,
        help="idle TLS connections per balancer (default 3000)",
    )
    parser.add_argument("--calls", type=int, help="SIPp calls per run (default 5000)")
    parser.add_argument(
        "--output",
        type=Path,
        help="where latest.json and latest.png go (default bench/results)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory and logs"
    )
    options = parser.parse_args(argv)
    quick = options.quick
    defaults = {
        "rounds": 1 if quick else 3,
        "seconds": 1.0 if quick else 5.0,
        "latency_seconds": 2.0 if quick else 5.0,
        "warmup": 0.5 if quick else 1.0,
        "megabytes": 100,
        "idle": 1000 if quick else 8000,
        "idle_tls": 500 if quick else 3000,
        "calls": 1000 if quick else 5000,
        "output": None if quick else HERE / "results",
    }
    for name, value in defaults.items():
        if getattr(options, name, None) is None:
            setattr(options, name, value)
    known = {t.key: t for t in TESTS}
    chosen = options.tests.split(",") if options.tests else list(known)
    unknown = [k for k in chosen if k not in known]
    if unknown:
        parser.error(f"unknown tests: {', '.join(unknown)}")
    options.chosen = [t for t in TESTS if t.key in chosen]
    return options


def check_tools(tests: list[Test]) -> None:
    missing = sorted(
        {tool for test in tests for tool in test.tools if not shutil.which(tool)}
    )
    if missing:
        packages = " ".join(PACKAGES[t] for t in missing)
        raise BenchError(
            f"not installed: {', '.join(missing)} (apt-get install {packages}; "
            "`make bench` does it)"
        )


def check_fd_limit(options: argparse.Namespace) -> None:
    """Raise the limit of open files; fit the idle test to it."""
    limit = raise_fd_limit()
    # A balancer holds two descriptors a relayed connection, and this
    # process one, besides what each keeps open anyway.
    fits = (limit - 200) // 2
    if options.idle > fits:
        print(
            f"the open-file limit is {limit}: {fits} idle connections instead of "
            f"{options.idle}",
            file=sys.stderr,
        )
        options.idle = fits
    options.idle_tls = min(options.idle_tls, fits)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    stop_on_signals()
    began = time.monotonic()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        check_tools(options.chosen)
        check_fd_limit(options)
        host = machine()
        directory = Path(tempfile.mkdtemp(prefix="ocsbal-bench-"))
        try:
            work = Work(directory, options.megabytes)
            work.prepare()
            bench = Bench(options, work)
            with bench.supervisor:
                bench.run(options.chosen)
        finally:
            if options.keep:
                print(f"logs and files kept in {directory}", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    publish(options, bench.results, host, date, time.monotonic() - began)
    return 0


def publish(
    options: argparse.Namespace,
    results: report.Results,
    host: dict[str, Any],
    date: str,
    elapsed: float,
) -> None:
    """Print the table; write latest.json and latest.png if asked."""
    shown = report.rows(results)
    rate = results.extra.get("latency_rate", 0)
    header: dict[str, Any] = {
        "date": date,
        "duration_seconds": round(elapsed),
        "machine": host,
        "options": {
            "rounds": options.rounds,
            "seconds": options.seconds,
            "latency_seconds": options.latency_seconds,
            "warmup": options.warmup,
            "megabytes": options.megabytes,
            "idle_connections": options.idle,
            "idle_tls_connections": options.idle_tls,
            "sipp_calls": options.calls,
            "tests": [t.key for t in options.chosen],
        },
    }
    versions = host["versions"]
    print(
        f"\n{host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, "
        f"load average {' '.join(host['load_average'])} at the start, "
        f"Linux {host['kernel']}; ocsbal {versions['ocsbal']}, Python "
        f"{versions['python']}, Twisted {versions['twisted']}, "
        f"{versions['haproxy'].split(' - ')[0]}"
    )
    print(
        f"medians of {options.rounds} rounds: {options.seconds:g} s per rate test, "
        f"latency at {rate:,.0f} req/s, {options.megabytes} MB bulk, "
        f"{options.idle:,} idle connections ({options.idle_tls:,} over TLS), "
        f"{options.calls:,} SIPp calls a run\n"
    )
    print(report.table(shown))
    errors = results.extra.get("errors")
    if errors:
        print(f"\nerrors counted by the load generators: {json.dumps(errors)}")
    print(f"\ntotal time {elapsed / 60:.1f} min")
    if options.output is not None:
        report.write_json(options.output / "latest.json", results, shown, header)
        chart = options.output / "latest.png"
        title = report.chart_title(date, host, options.rounds)
        if not report.write_chart(chart, results, shown, title):
            print("no chart: pip install matplotlib (`make bench` does)")
        elif options.output == HERE / "results":
            # docs/benchmarks.md shows it; MkDocs serves only files in docs/.
            shutil.copyfile(chart, DOCS_CHART)
        print(f"results in {options.output}")


if __name__ == "__main__":
    sys.exit(main())
