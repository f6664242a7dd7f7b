"""The benchmark's child processes: started in sessions of their own, always stopped.

Every long-lived process (servers, balancers) is started by a
:class:`Supervisor`, in a session of its own, so that stopping it reaches
the processes it forks too (Kamailio's children, nginx's worker).  The
supervisor is a context manager: leaving it, normally, on an exception, on
Ctrl-C or on SIGTERM, stops everything it started, SIGTERM first and
SIGKILL for what is left after a few seconds.  Each child is also asked to
be killed by the kernel if the benchmark itself dies (``PR_SET_PDEATHSIG``).
Every wait here is bounded.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from types import FrameType, TracebackType

#: Seconds a process may take to start listening, or to stop.
WAIT = 15.0
_PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what."""


def _die_with_parent() -> None:
    """In the child, before exec: be killed when the benchmark dies."""
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit.

    Children inherit it.  Returns the limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def stop_on_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP unwind the stack, so cleanup runs.

    SIGINT too: a shell starts background jobs with it ignored.
    """

    def handler(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"process {pid} has no VmRSS")


def tree_cpu_seconds(pid: int) -> float:
    """The CPU time of process ``pid`` and of its living children, in seconds.

    A balancer with worker processes does its work in its children.
    """
    return sum(cpu_seconds(p) for p in [pid, *children(pid)])


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def tree_rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` and of its living children, in KiB."""
    return sum(rss_kib(p) for p in [pid, *children(pid)])


def cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` has used, user and system, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime, the 14th and 15th fields (the 12th and 13th after the name)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Service:
    """One child process; its output goes to ``log``."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path) -> None:
        self.name, self.args, self.log = name, args, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads here)
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self, last: int = 2000) -> str:
        """The end of what the process wrote."""
        try:
            return self.log.read_text(errors="replace")[-last:]
        except OSError:
            return ""

    def check(self) -> None:
        """Raise if the process has exited."""
        if self.popen.poll() is not None:
            raise BenchError(
                f"{self.name} exited with status {self.popen.returncode}:\n"
                f"{self.output()}"
            )

    def wait_listening(self, host: str, port: int, timeout: float = WAIT) -> None:
        """Return once ``host:port`` accepts a connection; raise if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                socket.create_connection((host, port), timeout=1).close()
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"{self.name}: nothing listens on {host}:{port} after "
                        f"{timeout:g} s\n{self.output()}"
                    ) from None
                time.sleep(0.05)
            else:
                return

    def stop(self) -> None:
        """SIGTERM the process's session; SIGKILL whatever is left after ``WAIT``."""
        group = self.popen.pid
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(WAIT)
        # The leader may be gone and its children not (Kamailio, nginx).
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(WAIT)


class Supervisor:
    """Starts services; stops every one still running when the ``with`` ends."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.services: list[Service] = []

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        args: list[str],
        listening: list[tuple[str, int]] | None = None,
    ) -> Service:
        """Start ``args``; return once it accepts on every address of ``listening``."""
        service = Service(name, args, self.work / f"{name}.log", self.work)
        self.services.append(service)
        for host, port in listening or []:
            service.wait_listening(host, port)
        return service

    def named(self, name: str) -> Service:
        """The running service called ``name``."""
        for service in self.services:
            if service.name == name:
                return service
        raise BenchError(f"{name} is not running")

    def stop(self, service: Service) -> None:
        service.stop()
        if service in self.services:
            self.services.remove(service)

    def stop_all(self) -> None:
        # A second Ctrl-C while stopping must not leave the rest running.
        while self.services:
            service = self.services.pop()
            try:
                service.stop()
            except KeyboardInterrupt:
                self.services.append(service)
