"""
Network namespaces for the integration tests of NAT, the VIP and HA pairs.

Each test builds its own small network: a client, one or two balancers and
the servers, each a namespace, joined by veth pairs (and, for a pair of
balancers, a bridge in a namespace of its own).  Nothing is added to the
host's own namespace: links are created straight into their namespaces, and
every address is in 10.77.0.0/16, which exists only inside them.

The test process never moves into a namespace; a socket it needs there is
made by the calling thread stepping in just long enough to create it
(:meth:`Namespace.socket`), and keeps that namespace for its life.  Programs
(twistd, keepalived) run with ``ip netns exec``.  A :class:`Lab` kills every
process left in its namespaces and deletes them when closed, and clears away
the namespaces of earlier runs that died without doing so.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import WAIT, Launcher, Process, require_tool

IP = "/sbin/ip"
SS = "/bin/ss"
KEEPALIVED = "/usr/sbin/keepalived"
#: Every namespace is named PREFIX + the creating pid + a serial number.
PREFIX = "ocsb-"
TWISTD = str(Path(sys.executable).with_name("twistd"))

_CLONE_NEWNET = 0x40000000
_serial = itertools.count(1)


def require_namespaces() -> None:
    """Skip locally, fail in CI, unless network namespaces can be made here."""
    if os.geteuid() != 0:
        message = "network namespaces need root; run the tests as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    require_tool(IP, "iproute2")


def ip(*args: str) -> str:
    """Run ``ip ARGS``; return its output, or fail the test with its error."""
    return _run([IP, *args])


def _run(args: list[str]) -> str:
    done = subprocess.run(
        args,
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def _setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Return the seconds taken until ``condition()`` held; fail after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not after {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass(frozen=True)
class Namespace:
    """One network namespace, by name."""

    name: str

    def ip(self, *args: str) -> str:
        """Run ``ip ARGS`` in this namespace."""
        return ip("-n", self.name, *args)

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        """Run ``ip -json ARGS`` in this namespace; return what it printed."""
        return list(json.loads(self.ip("-json", *args) or "[]"))

    def command(self, *args: str) -> list[str]:
        """The command line running ``args`` in this namespace."""
        return [IP, "netns", "exec", self.name, *args]

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Put the calling thread (only) in this namespace for the body."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            there = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                _setns(there)
                try:
                    yield
                finally:
                    _setns(home)
            finally:
                os.close(there)
        finally:
            os.close(home)

    def sysctl(self, key: str, value: str) -> None:
        """Set ``net.KEY`` (such as ``ipv4.ip_forward``) in this namespace."""
        with self.entered():
            # /proc/sys/net is the namespace of whoever opens it.
            Path("/proc/sys/net", *key.split(".")).write_text(value)

    def socket(self) -> socket.socket:
        """A new TCP/IPv4 socket living in this namespace."""
        with self.entered():
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def connect(
        self, host: str, port: int, source: str | None = None, timeout: float = WAIT
    ) -> socket.socket:
        """Connect from this namespace (from ``source``, if given)."""
        sock = self.socket()
        try:
            sock.settimeout(timeout)
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def mac(self, device: str) -> str:
        """The hardware address of ``device``."""
        return str(self.ip_json("link", "show", "dev", device)[0]["address"])

    def addresses(self, device: str) -> list[str]:
        """The IPv4 addresses of ``device``."""
        links = self.ip_json("-4", "addr", "show", "dev", device)
        return [a["local"] for link in links for a in link.get("addr_info", [])]

    def neighbours(self, device: str) -> dict[str, str]:
        """The neighbour table of ``device``: IPv4 address to MAC (resolved only)."""
        return {
            entry["dst"]: entry["lladdr"]
            for entry in self.ip_json("-4", "neigh", "show", "dev", device)
            if "lladdr" in entry
        }

    def listening(self, address: str, port: int) -> bool:
        """Whether a TCP socket listens on ``address:port`` in this namespace."""
        out = _run(self.command(SS, "-Hltn", f"sport = :{port}"))
        return any(line.split()[3] == f"{address}:{port}" for line in out.splitlines())

    def wait_listening(self, address: str, port: int, process: Process) -> None:
        """Return once ``process`` listens on ``address:port``; fail if it exits."""

        def up() -> bool:
            if process.popen.poll() is not None:
                pytest.fail(f"process exited early:\n{process.output}")
            return self.listening(address, port)

        wait_for(up, f"{address}:{port} listening in {self.name}\n{process.output}")

    def pids(self) -> list[int]:
        """The processes in this namespace."""
        out = ip("netns", "pids", self.name)
        return [int(pid) for pid in out.split() if int(pid) != os.getpid()]

    def remove(self) -> None:
        """Kill every process left in this namespace, then delete it."""
        for pid in self.pids():
            _kill(pid)
        wait_for(lambda: not self.pids(), f"the processes in {self.name} ended")
        ip("netns", "delete", self.name)


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def purge_leftovers() -> None:
    """Delete the namespaces of earlier runs whose process is gone."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name.removeprefix(PREFIX).split("-")[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
            Namespace(name).remove()


class Lab:
    """The namespaces, processes and servers of one test; :meth:`close` ends all.

    :ivar launch: starts the test's processes (give each its own name).
    """

    def __init__(self, tmp_path: Path) -> None:
        require_namespaces()
        purge_leftovers()
        self.tag = f"{PREFIX}{os.getpid()}-{next(_serial)}"
        self.tmp_path = tmp_path
        self.launch = Launcher(tmp_path)
        self.namespaces: list[Namespace] = []
        self._servers: list[PeerEcho] = []
        #: Processes stopped with SIGTERM first, to end their children.
        self.graceful: list[Process] = []

    def namespace(self, role: str) -> Namespace:
        """A new namespace with its loopback up."""
        namespace = Namespace(f"{self.tag}-{role}")
        ip("netns", "add", namespace.name)
        self.namespaces.append(namespace)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def link(self, a: Namespace, a_device: str, b: Namespace, b_device: str) -> None:
        """Join ``a`` and ``b`` with a veth pair, both ends up."""
        ip(
            *("link", "add", a_device, "netns", a.name, "type", "veth"),
            *("peer", "name", b_device, "netns", b.name),
        )
        a.ip("link", "set", a_device, "up")
        b.ip("link", "set", b_device, "up")

    def serve(
        self, namespace: Namespace, addresses: tuple[str, ...], port: int
    ) -> PeerEcho:
        """Start :class:`PeerEcho` servers; they stop when the lab closes."""
        server = PeerEcho(namespace, addresses, port)
        self._servers.append(server)
        return server

    def twistd(self, name: str, namespace: Namespace, ini: str) -> Process:
        """Start ``twistd -n ocsbal`` on ``ini`` in ``namespace``; return at once."""
        config = self.launch.write(f"{name}.ini", ini)
        return self.launch.spawn(
            name,
            namespace.command(
                *(TWISTD, "--nodaemon", "--pidfile="),
                *("ocsbal", "--config", str(config)),
            ),
        )

    def close(self) -> None:
        """Stop the servers, kill the processes, delete the namespaces."""
        try:
            for server in self._servers:
                server.close()
            for process in self.graceful:
                if process.popen.poll() is None:
                    process.popen.terminate()
            for process in self.graceful:
                with suppress(subprocess.TimeoutExpired):
                    process.wait()
            self.launch.stop_all()
        finally:
            failures = []
            for namespace in reversed(self.namespaces):
                try:
                    namespace.remove()
                except BaseException as e:  # the others are removed all the same
                    failures.append(e)
            if failures:
                raise failures[0]


@contextmanager
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A :class:`Lab`, closed however the body ends."""
    built = Lab(tmp_path)
    try:
        yield built
    finally:
        built.close()


@dataclass(frozen=True)
class Line:
    """client -- balancer -- servers, joined by two veth pairs; nothing routed.

    The client and the VIP share a subnet, so the client resolves the VIP
    by ARP; the servers have two addresses and route through the balancer,
    which does not forward (``ip_forward = 0``): whatever reaches a server
    from the client came through ocsbal.
    """

    client: Namespace
    balancer: Namespace
    servers: Namespace

    CLIENT = "10.77.1.2"
    FRONT = "10.77.1.1"  # the balancer on the client side, the client's gateway
    VIP = "10.77.1.10"
    BACK = "10.77.2.1"  # the balancer on the server side, the servers' gateway
    SOURCE = "10.77.2.5"  # a second address on the server side, for [pool] source
    SERVERS = ("10.77.2.11", "10.77.2.12")
    #: The balancer's interfaces, client side and server side.
    FRONT_DEVICE = "front"
    BACK_DEVICE = "back"

    @classmethod
    def build(cls, lab: Lab) -> Line:
        client = lab.namespace("client")
        balancer = lab.namespace("lb")
        servers = lab.namespace("servers")
        lab.link(client, "eth0", balancer, cls.FRONT_DEVICE)
        lab.link(servers, "eth0", balancer, cls.BACK_DEVICE)
        client.ip("addr", "add", f"{cls.CLIENT}/24", "dev", "eth0")
        client.ip("route", "add", "default", "via", cls.FRONT)
        for address in (cls.FRONT, cls.VIP):
            balancer.ip("addr", "add", f"{address}/24", "dev", cls.FRONT_DEVICE)
        for address in (cls.BACK, cls.SOURCE):
            balancer.ip("addr", "add", f"{address}/24", "dev", cls.BACK_DEVICE)
        for address in cls.SERVERS:
            servers.ip("addr", "add", f"{address}/24", "dev", "eth0")
        servers.ip("route", "add", "default", "via", cls.BACK)
        balancer.sysctl("ipv4.ip_forward", "0")
        # Strict reverse-path filtering, the strictest a host may have.
        for device in ("all", "default", cls.FRONT_DEVICE, cls.BACK_DEVICE):
            balancer.sysctl(f"ipv4.conf.{device}.rp_filter", "1")
        return cls(client, balancer, servers)


@dataclass(frozen=True)
class Pair:
    """A client, two balancers and the servers on one bridge (in its own namespace).

    Every namespace but the bridge's has one interface, ``eth0``.
    """

    client: Namespace
    balancers: tuple[Namespace, Namespace]
    servers: Namespace

    CLIENT = "10.77.10.2"
    BALANCERS = ("10.77.10.3", "10.77.10.4")
    VIP = "10.77.10.10"
    SERVERS = ("10.77.10.11", "10.77.10.12")
    DEVICE = "eth0"

    @classmethod
    def build(cls, lab: Lab) -> Pair:
        bridge = lab.namespace("bridge")
        bridge.ip("link", "add", "br0", "type", "bridge")
        bridge.ip("link", "set", "br0", "up")
        client = lab.namespace("client")
        balancers = (lab.namespace("lb1"), lab.namespace("lb2"))
        servers = lab.namespace("servers")
        hosts = {
            client: (cls.CLIENT,),
            balancers[0]: cls.BALANCERS[:1],
            balancers[1]: cls.BALANCERS[1:],
            servers: cls.SERVERS,
        }
        for n, (host, addresses) in enumerate(hosts.items()):
            port = f"port{n}"
            lab.link(host, cls.DEVICE, bridge, port)
            bridge.ip("link", "set", port, "master", "br0")
            for address in addresses:
                host.ip("addr", "add", f"{address}/24", "dev", cls.DEVICE)
        return cls(client, balancers, servers)


@dataclass
class Accepted:
    """One connection a :class:`PeerEcho` accepted.

    :ivar peer: the address it came from, as the server saw it.
    :ivar server: the address it came to.
    :ivar received: how many bytes it brought, once it ended.
    :ivar digest: their SHA-256, once it ended.
    """

    peer: str
    server: str
    received: int = 0
    digest: str | None = None


@dataclass(frozen=True)
class Hello:
    """The line a :class:`PeerEcho` greets each connection with."""

    peer: str
    server: str


class PeerEcho:
    """TCP servers in a namespace, on ``port`` of each of ``addresses``.

    Each connection is first told the address it came from, as the server
    sees it: ``PEER ip:port SERVER ip:port\\n``; then every byte it sends is
    echoed, and its end (EOF) is answered with the server's own.  The
    threads serving them run in this process; their sockets live in the
    namespace.
    """

    def __init__(
        self, namespace: Namespace, addresses: tuple[str, ...], port: int
    ) -> None:
        self.accepted: list[Accepted] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        with namespace.entered():
            for address in addresses:
                self._listeners.append(socket.create_server((address, port)))
        for listener in self._listeners:
            listener.settimeout(0.1)
            self._start(self._accept, listener)

    def _start(
        self, target: Callable[[socket.socket], None], sock: socket.socket
    ) -> None:
        thread = threading.Thread(target=target, args=(sock,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._start(self._echo, conn)

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            peer, server = conn.getpeername(), conn.getsockname()
            accepted = Accepted(peer[0], server[0])
            self.accepted.append(accepted)
            conn.settimeout(0.1)
            digest = hashlib.sha256()
            try:
                conn.sendall(
                    b"PEER %s:%d SERVER %s:%d\n" % (*_text(peer), *_text(server))
                )
                while not self._stop.is_set():
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        accepted.digest = digest.hexdigest()
                        conn.shutdown(socket.SHUT_WR)
                        return
                    accepted.received += len(data)
                    digest.update(data)
                    conn.settimeout(WAIT)
                    conn.sendall(data)
                    conn.settimeout(0.1)
            except OSError:
                return  # a health check, or a client gone: nothing to echo

    def peers(self) -> set[str]:
        """Every address a connection came from."""
        return {accepted.peer for accepted in list(self.accepted)}

    def close(self) -> None:
        """Stop accepting and serving; wait (bounded) for the threads."""
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        for thread in self._threads:
            thread.join(WAIT)


def _text(address: tuple[str, int]) -> tuple[bytes, int]:
    return address[0].encode(), address[1]


def hello(sock: socket.socket) -> Hello:
    """Read the greeting of a :class:`PeerEcho` (before sending anything)."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"closed before the greeting; got {line!r}")
        line += chunk
    words = line.decode().split()
    assert words[0::2] == ["PEER", "SERVER"], line
    return Hello(words[1].rpartition(":")[0], words[3].rpartition(":")[0])


def echo(sock: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` then EOF while reading; return all that came back."""

    def send() -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    received = bytearray()
    with ThreadPoolExecutor(1) as pool:
        sending = pool.submit(send)
        while chunk := sock.recv(65536):
            received += chunk
        sending.result(timeout=WAIT)
    return bytes(received)


@dataclass
class Keepalived:
    """keepalived (VRRP only) on one configuration, in one namespace.

    It runs in the foreground and logs to its output only (not syslog), with
    its pid files beside its configuration: the host's /etc/keepalived and
    keepalived service are never used.
    """

    config: Path
    process: Process

    @classmethod
    def start(cls, lab: Lab, name: str, namespace: Namespace, text: str) -> Keepalived:
        config = lab.launch.write(f"{name}.conf", text)
        # Unknown keywords are only warned about when running: refuse them.
        _run(namespace.command(KEEPALIVED, "--config-test", "--use-file", str(config)))
        pids = [
            f"{lab.tmp_path}/{name}.{what}.pid" for what in ("main", "vrrp", "checkers")
        ]
        args = [KEEPALIVED, "--vrrp", "--dont-fork", "--log-console"]
        args += ["--log-detail", "--no-syslog", "--use-file", str(config)]
        args += ["--pid", pids[0], "--vrrp_pid", pids[1], "--checkers_pid", pids[2]]
        process = lab.launch.spawn(name, namespace.command(*args))
        lab.graceful.append(process)
        return cls(config, process)

    def entered(self, state: str) -> int:
        """How many times the VRRP instance entered ``state`` (``MASTER``...)."""
        return self.process.output.count(f"Entering {state} STATE")
