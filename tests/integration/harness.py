"""
Helpers for the integration tests: real processes, real sockets on loopback.

The balancer runs as ``twistd -n ocsbal`` and the servers as the demo front
ends (``python -m ocsbal.demo --servers-only``), each in its own process, so
these tests exercise exactly what an operator runs.  Every test uses its own
127.0.x.0/24 block so no two tests, nor a running ``make demo``
(127.0.0.10-13), share an address.  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

WAIT = 15.0  # seconds any one start, stop or reply may take at most


def pool_ini(
    vip: str,
    servers: dict[str, tuple[str, int]],
    ports: dict[int, str],
    **pool: object,
) -> str:
    """An INI file for a pool: ``servers`` maps name to (address, weight)."""
    lines = ["[pool]", "name = itest", "fqdn = itest.example.com", f"vip = {vip}"]
    lines += [f"{k} = {v}" for k, v in pool.items()]
    lines += ["", "[ports]"] + [f"{n} = {p}" for n, p in ports.items()]
    for name, (address, weight) in servers.items():
        lines += ["", f"[server:{name}]", f"address = {address}", f"weight = {weight}"]
    return "\n".join(lines) + "\n"


#: The line that counts the repeats of a rate-limited log line.
REPEATS = re.compile(r"(\d+) more like this in the last [\d.]+ s, the last: ")


def told(output: str, text: str) -> int:
    """How many times a line holding ``text`` was logged.

    Lines about single connections are rate-limited: the first of a kind is
    written, the others counted into one line, which ends with the last.
    The whole count is in the log once the balancer has stopped.
    """
    total = 0
    for line in output.splitlines():
        if text in line:
            repeats = REPEATS.search(line)
            total += int(repeats[1]) if repeats else 1
    return total


T = TypeVar("T")


def settled(read: Callable[[], T], done: Callable[[T], bool], within: float = 1.0) -> T:
    """What ``read()`` gives once ``done`` says so, or after ``within`` seconds.

    With workers, the control process hears of their counts at most every
    ``ocsbal._amp.COUNTS_GAP`` and passes them on as often, so what it
    reports of connections lags their opening and closing a little.
    """
    deadline = time.monotonic() + within
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=WAIT)


def wait_listening(host: str, port: int, process: Process | None = None) -> None:
    """Return once ``host:port`` accepts; fail if ``process`` exits first."""
    end = time.monotonic() + WAIT
    while True:
        if process is not None and process.popen.poll() is not None:
            pytest.fail(f"process exited early:\n{process.output}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                detail = process.output if process else ""
                pytest.fail(f"{host}:{port} never listened\n{detail}")
            time.sleep(0.05)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {data!r}")
        data += chunk
    return data


def options(sock: socket.socket, n: int = 1) -> str:
    """Send a SIP OPTIONS on ``sock``; return the name of the server answering."""
    sock.sendall(
        b"OPTIONS sip:itest.example.com SIP/2.0\r\n"
        b"Call-ID: %d@itest\r\nCSeq: %d OPTIONS\r\nContent-Length: 0\r\n\r\n" % (n, n)
    )
    response = read_until(sock, b"\r\n\r\n").decode()
    assert response.startswith("SIP/2.0 200 OK"), response
    server = next(h for h in response.split("\r\n") if h.startswith("Server:"))
    return server.split()[2]  # "Server: ocsbal-demo NAME (ADDRESS)"


def register(sock: socket.socket, n: int = 1, expires: int = 3600) -> None:
    """Register ``user{n}`` over ``sock`` for ``expires`` seconds (an hour);
    the server says 200 OK."""
    sock.sendall(
        b"REGISTER sip:itest.example.com SIP/2.0\r\nTo: <sip:user%d@itest>\r\n"
        b"Call-ID: r%d@itest\r\nCSeq: 1 REGISTER\r\nContact: <sip:user%d@c>\r\n"
        b"Expires: %d\r\nContent-Length: 0\r\n\r\n" % (n, n, n, expires)
    )
    response = read_until(sock, b"\r\n\r\n").decode()
    assert response.startswith("SIP/2.0 200 OK"), response


def exchange(host: str, port: int, protocol: str) -> None:
    """One round trip on a new connection: an OPTIONS on a SIP port, an echo
    on a plain one."""
    with connect(host, port) as sock:
        if protocol == "tcp":
            sock.sendall(b"ping %d" % port)
            assert read_until(sock, b"%d" % port) == b"ping %d" % port
        else:
            assert options(sock) in {"fe1", "fe2", "fe3"}


#: The ``ocsbal`` command of this environment.
OCSBAL = str(Path(sys.executable).with_name("ocsbal"))


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ocsbal ctl ARGS``; its status and output."""
    return subprocess.run(
        [OCSBAL, "ctl", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def who_answers(host: str, port: int) -> str:
    """Open a connection, ask one OPTIONS, close: the server that answered."""
    with connect(host, port) as sock:
        return options(sock)


class Process:
    """A child process whose output goes to a file the test can read."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).parents[2],
        )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait(self) -> int:
        code = self.popen.wait(timeout=WAIT)
        self._out.close()
        return code

    def stop(self) -> int:
        """SIGTERM, as an init system would; return the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def assert_stops_cleanly(self, signalled: bool = False) -> None:
        """
        SIGTERM (sent here unless ``signalled``) shuts twistd down in order.

        twistd reports the signal that stopped it by exiting with that signal
        (Twisted's ``_exitWithSignal``), so a clean stop is status -SIGTERM.
        """
        code = self.wait() if signalled else self.stop()
        assert code == -signal.SIGTERM, self.output
        assert "Server Shut Down." in self.output
        assert "Traceback" not in self.output, self.output

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=WAIT)
        self._out.close()


class Launcher:
    """Starts balancers and demo servers for one test, and stops them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[Process] = []

    def write(self, name: str, text: str) -> Path:
        path = self.tmp_path / name
        path.write_text(text)
        return path

    def spawn(self, name: str, args: list[str]) -> Process:
        process = Process(args, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def twistd(self, config: Path, *extra: str) -> Process:
        """Run ``twistd -n ocsbal --config CONFIG``, exactly as an operator would."""
        return self.spawn(
            "twistd",
            [
                *(str(Path(sys.executable).with_name("twistd")), "--nodaemon"),
                *("--pidfile=", "ocsbal", "--config", str(config), *extra),
            ],
        )

    def balancer(self, ini: str, *extra: str) -> Process:
        """Run ``twistd -n ocsbal`` on ``ini``; return once its VIP accepts.

        With several workers, once they all run: the VIP's sockets take
        connections (into their queue) a moment before.
        """
        config = self.write("pool.ini", ini)
        process = self.twistd(config, *extra)
        await_workers(process, ini)
        self._await_listening(process, ini)
        return process

    def servers(self, ini: str, name: str = "servers") -> Process:
        """Run demo front ends for the servers of ``ini``; return once listening."""
        config = self.write(f"{name}.ini", ini)
        process = self.spawn(
            name,
            [
                sys.executable,
                "-m",
                "ocsbal.demo",
                "--servers-only",
                "--config",
                str(config),
            ],
        )
        self._await_listening(process, ini, servers=True)
        return process

    def _await_listening(
        self, process: Process, ini: str, servers: bool = False
    ) -> None:
        from ocsbal.config import parse

        pool = parse(ini)
        hosts = [s.address for s in pool.servers] if servers else [pool.vip]
        for host in hosts:
            wait_listening(host, pool.ports[0].number, process)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.kill()


def await_workers(process: Process, ini: str) -> None:
    """Wait until the workers of ``ini``'s pool run, if it has several."""
    from ocsbal.config import parse
    from ocsbal.tap import worker_count

    if worker_count(parse(ini)) == 1:
        return
    deadline = time.monotonic() + WAIT
    while " relays in " not in process.output:
        if process.popen.poll() is not None:
            pytest.fail(f"process exited early:\n{process.output}")
        assert time.monotonic() < deadline, process.output
        time.sleep(0.05)


def require_root(what: str) -> None:
    """Skip locally, fail in CI, when not root."""
    if os.geteuid() == 0:
        return
    message = f"{what} needs root (ports below 1024); run the tests as root"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Load:
    """Clients using the VIP without pause, in threads, while a test changes things.

    ``short`` threads each open a connection, ask one OPTIONS and close,
    over and over; ``held`` connections stay open and ask an OPTIONS every
    ``period`` seconds.  Every answer is recorded with the time its
    connection was opened; every
    error is kept, so a test can assert that none happened.
    """

    def __init__(
        self, host: str, port: int, short: int = 2, held: int = 3, period: float = 0.1
    ) -> None:
        self.host, self.port, self.period = host, port, period
        self.answers: list[tuple[float, str]] = []
        self.held_answers: dict[int, list[str]] = {i: [] for i in range(held)}
        #: Each failure: when its connection was opened, and what happened.
        self.failures: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._short, daemon=True) for _ in range(short)
        ] + [
            threading.Thread(target=self._held, args=(i,), daemon=True)
            for i in range(held)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)

    def _short(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            opened = time.monotonic()
            try:
                server = who_answers(self.host, self.port)
            except Exception as e:  # every failure is the finding
                self.failures.append((opened, f"short connection {n}: {e!r}"))
            else:
                self.answers.append((opened, server))

    def _held(self, index: int) -> None:
        opened = time.monotonic()
        try:
            with connect(self.host, self.port) as sock:
                n = 0
                while not self._stop.wait(self.period):
                    n += 1
                    self.held_answers[index].append(options(sock, n))
        except Exception as e:  # every failure is the finding
            self.failures.append((opened, f"held connection {index}: {e!r}"))

    @property
    def errors(self) -> list[str]:
        """What went wrong, for any connection."""
        return [error for _, error in self.failures]

    def since(self, moment: float) -> list[str]:
        """The servers that answered new connections opened after ``moment``."""
        return [server for at, server in list(self.answers) if at > moment]

    def wait_for(self, server: str, after: float = 0.0) -> None:
        """Return once ``server`` answered a new connection after ``after``."""
        deadline = time.monotonic() + WAIT
        while server not in self.since(after):
            assert time.monotonic() < deadline, f"{server} never answered"
            time.sleep(0.05)


def admin_call(
    address: str, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    """Call the admin API at ``address`` (host:port); return status and JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{address}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def require_tool(path: str, package: str) -> None:
    """Skip locally, fail in CI, when the program at ``path`` is missing."""
    if Path(path).exists():
        return
    message = f"{path} is missing; install it with: apt-get install {package}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
