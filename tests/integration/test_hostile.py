"""Hostile input and security defaults, against a live ``twistd -n ocsbal``.

Real processes on loopback, in 127.0.82.0/24 only.  The balancer's VIP is
127.0.82.10 with 5060 (``sip``) and 5061 (``sips``, TLS terminated), its
admin API on 127.0.82.1:19982; clients come from 127.0.82.1.  Behind it,
the server script below (one process a server) answers on both ports: a
connection that opens with :data:`REGISTRAR` is a well-behaved registrar,
any other is echoed byte for byte, so a client can tell that whatever it
sent crossed the balancer unchanged, both ways.  Certificates come from
trustme, as in ``test_tls_live.py`` (its :class:`PKI` is reused): the pool's
certificate is signed by one authority the clients trust, the servers' by
another that the balancer trusts.
"""

from __future__ import annotations

import base64
import json
import random
import re
import resource
import secrets
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from harness import (
    WAIT,
    Launcher,
    Process,
    admin_call,
    connect,
    pool_ini,
    require_root,
    told,
    wait_listening,
)
from test_tls_live import PKI

from ocsbal.config import parse
from ocsbal.sip import MAX_HEADER_BYTES, GaveUp, SIPInspector
from ocsbal.tap import worker_count

VIP = "127.0.82.10"
CLIENT = "127.0.82.1"
ADMIN = "127.0.82.1:19982"
FE01 = "127.0.82.11"
FQDN = "itest.example.com"  # the pool's name, which PKI's certificate carries
SIP, SIPS = 5060, 5061
HANDSHAKE_TIMEOUT = 2
MARGIN = 3  # seconds past handshake_timeout a busy machine may take

#: A connection whose first bytes are these is answered as a registrar.
REGISTRAR = b"REGISTER sip:registrar.itest SIP/2.0\r\n"

#: The servers: ``python SCRIPT ADDRESS PEM [MAX_TLS]``, on ports 5060 (plain)
#: and 5061 (TLS, presenting PEM; at most TLS 1.1 if MAX_TLS is ``1.1``).
SERVER = r'''
import re, socket, ssl, sys, threading

address, pem = sys.argv[1], sys.argv[2]
REGISTRAR = b"REGISTER sip:registrar.itest SIP/2.0\r\n"
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(pem)
if sys.argv[3:] == ["1.1"]:
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1


def header(head, *names):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() in names:
            return value.strip()
    return None


def registrar(conn, buffer):
    """Answer each REGISTER 200 OK, granting its Contact 900 s."""
    while True:
        while b"\r\n\r\n" not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = int(header(head, b"content-length", b"l") or 0)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            rest += chunk
        buffer = rest[length:]
        lines = [b"SIP/2.0 200 OK"]
        for key in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
            value = header(head, key.lower())
            if value is not None:
                lines.append(key + b": " + value)
        contact = re.search(rb"<[^>]*>", header(head, b"contact", b"m") or b"")
        if contact:
            lines.append(b"Contact: " + contact[0] + b";expires=900")
        conn.sendall(b"\r\n".join(lines) + b"\r\nContent-Length: 0\r\n\r\n")


def serve(raw, tls):
    with raw:
        raw.settimeout(60)
        try:
            conn = context.wrap_socket(raw, server_side=True) if tls else raw
            buffer = b""
            while len(buffer) < len(REGISTRAR) and REGISTRAR.startswith(buffer):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            if buffer.startswith(REGISTRAR):
                registrar(conn, buffer)
                return
            while buffer:  # an echo, to the end
                conn.sendall(buffer)
                buffer = conn.recv(65536)
        except OSError:
            pass  # a health check, a failed handshake, a reset


def listen(port, tls):
    listener = socket.create_server((address, port), backlog=128)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=serve, args=(raw, tls), daemon=True).start()


threading.Thread(target=listen, args=(5060, False), daemon=True).start()
listen(5061, True)
'''


def start_server(
    launch: Launcher, pki: PKI, address: str, name: str, *extra: str
) -> Process:
    """Start the server script on ``address`` with a certificate for ``name``."""
    script = launch.tmp_path / "hostile_server.py"
    if not script.exists():
        script.write_text(SERVER)
    pem = pki.server_pem(name)
    process = launch.spawn(
        name, [sys.executable, str(script), address, str(pem), *extra]
    )
    wait_listening(address, SIPS, process)
    return process


def hostile_ini(servers: dict[str, str], trust: bool = True, admin: str = "") -> str:
    """A pool on the VIP terminating TLS on 5061, with the admin API.

    ``servers`` maps a name to its address; server NAME's certificate is
    checked for ``NAME.example.com``, against the servers' authority unless
    ``trust`` is false (then the system's authorities, the default).
    ``admin`` is more of the ``[admin]`` section.
    """
    lines = ["[pool]", "name = itest", f"fqdn = {FQDN}", f"vip = {VIP}"]
    lines += ["scheduler = round-robin", "", "[ports]"]
    lines += [f"{SIP} = sip", f"{SIPS} = sips"]
    for name, address in servers.items():
        lines += ["", f"[server:{name}]", f"address = {address}"]
        lines += [f"tls_name = {name}.example.com"]
    lines += ["", "[tls]", "mode = terminate", "certificate = pool.pem"]
    lines += [f"handshake_timeout = {HANDSHAKE_TIMEOUT}"]
    if trust:
        lines += ["trust = servers-ca.pem"]
    host, port = ADMIN.split(":")
    lines += ["", "[admin]", f"listen = tcp:{port}:interface={host}", admin]
    return "\n".join(lines) + "\n"


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def client_context(pki: PKI) -> ssl.SSLContext:
    """A client's TLS: it trusts the pool's authority and checks the name."""
    return pki.client_context(pki.clients_ca)


def open_plain(port: int = SIP) -> socket.socket:
    return socket.create_connection((VIP, port), WAIT, source_address=(CLIENT, 0))


def open_tls(context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = open_plain(SIPS)
    try:
        return context.wrap_socket(raw, server_hostname=FQDN)
    except BaseException:
        raw.close()
        raise


def echoed(sock: socket.socket, stream: bytes, seed: int) -> bytes:
    """Send ``stream`` in random pieces, reading the echo as it comes back.

    One thread does both (an ``SSLSocket`` must not be read and written at
    once from two threads), keeping at most 64 KiB in flight.
    """
    cut = random.Random(seed)
    received = bytearray()
    at = 0
    while len(received) < len(stream):
        if at < len(stream) and at - len(received) < 65536:
            size = cut.choice([1, 2, 7, 100, 1500, 16384])
            sock.sendall(stream[at : at + size])
            at += size
            continue
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def connection(sock: socket.socket) -> dict[str, Any]:
    """The admin API's report of the connection whose client end is ``sock``."""
    status, connections = admin_call(ADMIN, "GET", "/api/connections")
    assert status == 200, connections
    me = "{}:{}".format(*sock.getsockname())
    reports: list[dict[str, Any]] = [c for c in connections if c["client"] == me]
    assert len(reports) == 1, connections
    return reports[0]


def metrics() -> str:
    with urllib.request.urlopen(f"http://{ADMIN}/metrics", timeout=WAIT) as answer:
        return str(answer.read().decode())


def given_up(text: str) -> Counter[str]:
    """``ocsbal_sip_inspections_given_up_total`` by reason, from /metrics."""
    found = re.findall(
        r'^ocsbal_sip_inspections_given_up_total\{pool="itest",reason="([^"]+)"\} '
        r"([0-9.e+]+)$",
        text,
        re.MULTILINE,
    )
    return Counter({reason: int(float(n)) for reason, n in found})


def listener(port: int) -> dict[str, int]:
    """/api/pool's counts of the VIP's ``port``: ``active``, ``accepted``..."""
    status, pool = admin_call(ADMIN, "GET", "/api/pool")
    assert status == 200, pool
    [counts] = [x for x in pool["listeners"] if x["port"] == port]
    return {k: v for k, v in counts.items() if isinstance(v, int)}


def active(port: int) -> int:
    """Client connections open on the VIP's ``port``."""
    return listener(port)["active"]


def accepted(port: int) -> int:
    """Client connections accepted on the VIP's ``port`` so far."""
    return listener(port)["accepted"]


def wait_until(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, f"{what}: not within {within} s"
        time.sleep(0.1)


def register(n: int, user: str = "normal") -> bytes:
    return (
        REGISTRAR
        + (
            f"Via: SIP/2.0/TCP {CLIENT};branch=z9hG4bK{n}\r\n"
            f"From: <sip:{user}@itest>;tag={n}\r\nTo: <sip:{user}@itest>\r\n"
            f"Call-ID: {user}@itest\r\nCSeq: {n} REGISTER\r\n"
            f"Contact: <sip:{user}@{CLIENT}>\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )


def registered(sock: socket.socket, n: int, user: str = "normal") -> None:
    """Send REGISTER number ``n``; check its 200 OK."""
    sock.sendall(register(n, user))
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {answer!r}")
        answer += chunk
    assert answer.startswith(b"SIP/2.0 200 OK\r\n"), answer
    assert f"CSeq: {n} REGISTER".encode() in answer, answer


class NormalClient:
    """A client that registers over one connection, again and again, in a thread.

    Its failures are kept, and its connection is kept open until the test
    has looked at it.
    """

    def __init__(self, opener: Callable[[], socket.socket], user: str) -> None:
        self.opener, self.user = opener, user
        self.sock: socket.socket | None = None
        self.answered = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sock = self.opener()
            while not self._stop.is_set():
                registered(self.sock, self.answered + 1, self.user)
                self.answered += 1
                self._stop.wait(0.05)
        except Exception as e:  # every failure is the finding
            self.errors.append(repr(e))

    def __enter__(self) -> NormalClient:
        self._thread.start()
        wait_until(lambda: bool(self.answered or self.errors), "a first answer")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        if self.sock is not None:
            self.sock.close()


def hostile_streams() -> list[tuple[str, bytes, str | None]]:
    """Each hostile stream: its name, its bytes, and why inspection gives up.

    ``None``: inspection carries on, having no way to tell.  Why it gives
    up on random bytes is what a :class:`SIPInspector` of this process
    says (it does give up).
    """
    noise = random.Random(7).randbytes(256 * 1024)
    noisy = b"OPTIONS sip:x SIP/2.0\r\n\r\n" + random.Random(8).randbytes(64 * 1024)
    head = b"OPTIONS sip:cap SIP/2.0\r\nX-Pad: "
    at_cap = head + b"a" * (MAX_HEADER_BYTES - len(head) - 4) + b"\r\n\r\n"
    assert len(at_cap) == MAX_HEADER_BYTES
    message = b"MESSAGE sip:x SIP/2.0\r\nContent-Type: text/plain\r\n"
    return [
        ("header block at the 64 KiB cap", at_cap, None),
        (
            "header block one byte over the cap",
            at_cap[:-4] + b"a\r\n\r\n",
            "header-too-large",
        ),
        (
            "a header block that never ends",
            head + b"b" * (3 * MAX_HEADER_BYTES),
            "header-too-large",
        ),
        (
            "Content-Length longer than the body",
            message + b"Content-Length: 5000\r\n\r\nshort"
            b"OPTIONS sip:swallowed SIP/2.0\r\n\r\n",
            None,
        ),
        (
            "Content-Length shorter than the body",
            message + b"Content-Length: 2\r\n\r\nhello world\r\n\r\n",
            "bad-start-line",
        ),
        (
            "two Content-Lengths that disagree",
            message + b"Content-Length: 3\r\nl: 4\r\n\r\nabcd",
            "bad-content-length",
        ),
        (
            "a negative Content-Length",
            message + b"Content-Length: -5\r\n\r\nhello",
            "bad-content-length",
        ),
        (
            "an enormous Content-Length",
            message + b"Content-Length: 99999999999999999999\r\n\r\nhello",
            "bad-content-length",
        ),
        ("NUL bytes", b"\x00" * 4096, "bad-start-line"),
        (
            "a NUL in a REGISTER's header name",
            b"REGISTER sip:x SIP/2.0\r\nCall\x00-ID: 1\r\n\r\n",
            "bad-header",
        ),
        # Only a REGISTER transaction's header lines are read: any other
        # message is framed, relayed, and its headers left unjudged.
        (
            "a NUL in an OPTIONS header name",
            b"OPTIONS sip:x SIP/2.0\r\nCall\x00-ID: 1\r\n\r\n",
            None,
        ),
        (
            "a NUL in the Request-URI",
            b"OPTIONS sip:\x00x SIP/2.0\r\n\r\n",
            "bad-start-line",
        ),
        (
            "2 MB of CRLF, then a request",
            b"\r\n" * 1_000_000 + b"OPTIONS sip:after-crlf SIP/2.0\r\n\r\n",
            None,
        ),
        (
            "CRLFs, then a lone LF",
            b"\r\n" * 50_000 + b"\n" + b"x" * 100,
            "bad-keep-alive",
        ),
        ("random bytes", noise, oracle(noise)),
        ("random bytes after a request", noisy, oracle(noisy)),
    ]


def surprises(name: str, reason: str | None, sip: dict[str, Any]) -> list[str]:
    """What /api/connections said of a hostile stream that it should not have."""
    inspection = "on" if reason is None else f"gave up: {reason}"
    if sip["inspection"] != inspection:
        return [f"{name}: inspection {sip['inspection']!r}"]
    if name.startswith("2 MB of CRLF") and (
        sip["keepalives"],
        sip["last_message"],
    ) != (1_500_000, "OPTIONS sip:after-crlf"):
        # 500,000 pings from the client, 1,000,000 pongs echoed.
        return [f"{name}: {sip}"]
    if name == "Content-Length longer than the body" and (
        sip["last_message"] != "MESSAGE sip:x"
    ):
        # The OPTIONS is read as the MESSAGE's body: no way to tell.
        return [f"{name}: {sip}"]
    return []


def oracle(stream: bytes) -> str:
    """Why an inspector gives up on ``stream``, which it must."""
    events = SIPInspector().feed(stream)
    [reason] = [e.reason for e in events if isinstance(e, GaveUp)]
    return reason


@pytest.mark.parametrize("port", [SIP, SIPS], ids=["sip-5060", "sips-5061-terminated"])
def test_hostile_sip_is_relayed_byte_exact_and_inspection_gives_up_cleanly(
    launch: Launcher, pki: PKI, port: int
) -> None:
    """Garbage, truncated and huge SIP is relayed untouched; only inspection stops.

    On 5060, and on 5061 with TLS terminated, each hostile stream (header
    blocks at and over the 64 KiB cap, Content-Length lies, negative and
    enormous lengths, NUL bytes, 2 MB of CRLF, random bytes) is sent on a
    connection of its own, in random pieces, to a server that echoes it:
    what comes back is exactly what was sent.  While the connection is
    still open, /api/connections says ``"gave up: REASON"`` for the streams
    the inspector cannot follow (and ``"on"`` for those it cannot tell are
    lies), and /metrics counts each give-up by reason.  All the while a
    normal client on another connection keeps registering, is answered every
    time, and is reported registered for the 900 s its registrar granted.
    """
    start_server(launch, pki, FE01, "fe01.example.com")
    balancer = launch.balancer(hostile_ini({"fe01": FE01}))
    context = client_context(pki)

    def opener() -> socket.socket:
        return open_tls(context) if port == SIPS else open_plain(SIP)

    expected: Counter[str] = Counter()
    wrong: list[str] = []
    with NormalClient(opener, "normal") as normal:
        before = normal.answered
        for seed, (name, stream, reason) in enumerate(hostile_streams()):
            with opener() as sock:
                back = echoed(sock, stream, seed)
                if back != stream:
                    wrong.append(f"{name}: {len(back)} of {len(stream)} bytes back")
                sip = connection(sock)["sip"]
            wrong += surprises(name, reason, sip)
            if reason is not None:
                expected[reason] += 1
        after = normal.answered
        wait_until(
            lambda: normal.answered > after + 1 or bool(normal.errors),
            "the normal client answered after the hostile streams",
        )
        assert normal.sock is not None
        report = connection(normal.sock)["sip"]
    assert normal.errors == []
    assert after > before
    assert report["inspection"] == "on"
    assert list(report["registered"]) == ["sip:normal@itest"]
    assert 880 < report["registered"]["sip:normal@itest"] <= 900
    assert wrong == []
    assert given_up(metrics()) == expected
    wait_until(lambda: active(port) == 0, "every connection closed")
    assert "Traceback" not in balancer.output
    balancer.assert_stops_cleanly()


def test_a_register_built_to_parse_slowly_freezes_nothing(
    launch: Launcher, pki: PKI
) -> None:
    """Issue 11: four pipelined 60 KB REGISTERs, each Contact a comma and then
    a quoted string whose every quote is escaped, froze every port and the
    admin API for 82.6 s, and the health checks timed out.  Sent again, on
    5060 and on a terminated 5061, the admin API and a normal client on
    another connection are answered at once, and the attack is relayed."""
    start_server(launch, pki, FE01, "fe01.example.com")
    balancer = launch.balancer(hostile_ini({"fe01": FE01}))
    contact = b'<sip:a@b>, "' + b'\\"' * 30_000
    attack = register(1, "mallory").replace(
        b"Contact: <sip:mallory@" + CLIENT.encode() + b">", b"Contact: " + contact
    )
    assert len(attack) > 60_000
    context = client_context(pki)
    for opener in (lambda: open_plain(SIP), lambda: open_tls(context)):
        with opener() as hostile, opener() as normal:
            hostile.sendall(attack * 4)
            started = time.monotonic()
            status, _ = admin_call(ADMIN, "GET", "/api/pool")
            registered(normal, 1)
            took = time.monotonic() - started
            answers = b""
            while answers.count(b"SIP/2.0 200 OK") < 4:
                chunk = hostile.recv(65536)
                assert chunk, answers[-200:]
                answers += chunk
        print(f"admin API and a REGISTER answered in {took:.3f} s")
        assert status == 200
        assert took < 2, took
    _, servers = admin_call(ADMIN, "GET", "/api/servers")
    assert servers[0]["health"] == "up"
    balancer.assert_stops_cleanly()


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=FQDN)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", hello[:10]
    assert len(hello) > 200, hello
    return hello


def closed_by_peer(sock: socket.socket, within: float) -> float | None:
    """Seconds until the balancer closes ``sock`` (EOF or reset), or None."""
    start = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - start


def test_truncated_and_garbage_handshakes_are_cut_off(
    launch: Launcher, pki: PKI
) -> None:
    """A terminated port survives broken handshakes, each cut off in time.

    The first 1, 5, 6 or all but one bytes of a real ClientHello, then
    silence: the balancer closes each within ``handshake_timeout`` (2 s)
    plus a margin, logging it for each client (the first line of each
    reason written, the others counted).  The same pieces followed by
    the client's close cost nothing more.  Random bytes, and a record header
    that announces 16 KiB never sent, are closed too (the random ones at
    once).  Meanwhile and afterwards a real TLS client is served, and the
    balancer's count of open connections on 5061 comes back to 0.
    """
    start_server(launch, pki, FE01, "fe01.example.com")
    balancer = launch.balancer(hostile_ini({"fe01": FE01}))
    context = client_context(pki)
    hello = client_hello(context)

    stalled: list[tuple[str, socket.socket, float]] = []
    for n in (1, 5, 6, len(hello) - 1):
        sock = open_plain(SIPS)
        sock.sendall(hello[:n])
        stalled.append((f"{n} bytes of the ClientHello", sock, time.monotonic()))
    sock = open_plain(SIPS)
    sock.sendall(b"\x16\x03\x01\x40\x00" + hello[5:50])
    stalled.append(("a record header announcing 16 KiB", sock, time.monotonic()))
    for n in (1, 5, len(hello) - 1):
        with open_plain(SIPS) as sock:
            sock.sendall(hello[:n])
    with open_plain(SIPS) as garbage:
        garbage.sendall(random.Random(3).randbytes(3000))
        assert closed_by_peer(garbage, WAIT) is not None

    with open_tls(context) as tls:  # served while the stalled ones wait
        registered(tls, 1, "during")
    lives = {}
    for name, sock, opened in stalled:
        with sock:
            if closed_by_peer(sock, HANDSHAKE_TIMEOUT + MARGIN) is not None:
                lives[name] = time.monotonic() - opened
    assert len(lives) == len(stalled), lives
    assert all(
        HANDSHAKE_TIMEOUT - 0.1 < life < HANDSHAKE_TIMEOUT + MARGIN
        for life in lives.values()
    ), lives
    with open_tls(context) as tls:
        registered(tls, 1, "after")
    wait_until(lambda: active(SIPS) == 0, "every connection on 5061 closed")
    balancer.assert_stops_cleanly()  # which writes the counts held
    output = balancer.output
    assert told(output, "no TLS handshake within 2 s") == len(stalled), output
    assert told(output, "dropped: TLS handshake failed: wrong version number") == 1
    # Those closed after a piece of a ClientHello: once each at most
    # (today not at all: they count as probes closed before a word).
    assert told(output, "dropped") <= len(stalled) + 1 + 3, output
    assert "Traceback" not in output


SLOWLORIS = 2000


@contextmanager
def open_files(wanted: int) -> Iterator[int]:
    """Raise this process's soft limit on open files to its hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield wanted if hard == resource.RLIM_INFINITY else hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Idle:
    """Connections to the terminated port that never say a word.

    :ivar opened: when each was opened.
    :ivar closed: when the balancer closed each (EOF or reset seen).
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.opened: dict[socket.socket, float] = {}
        self.closed: dict[socket.socket, float] = {}

    def open(self, count: int) -> None:
        """Open ``count`` more, and return once the balancer accepted them.

        They go in batches the listen backlog (50) holds: a connection the
        kernel cannot queue would be established on the client's side
        only, and never reach the balancer.
        """
        base = accepted(SIPS) - len(self.opened)
        for at in range(0, count, 40):
            for _ in range(min(40, count - at)):
                sock = socket.socket()
                sock.setblocking(False)
                sock.bind((CLIENT, 0))
                with suppress(BlockingIOError):
                    sock.connect((VIP, SIPS))
                self.opened[sock] = time.monotonic()
                self.selector.register(sock, selectors.EVENT_READ)
            wait_until(
                lambda: accepted(SIPS) - base >= len(self.opened),
                "the balancer accepting the idle connections",
            )

    def wait_closed(self, deadline: float) -> None:
        """Note when each is closed, until all are or ``deadline`` passes."""
        while len(self.closed) < len(self.opened) and time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with suppress(ConnectionResetError):
                    assert sock.recv(1) == b""
                self.closed[sock] = time.monotonic()
                self.selector.unregister(sock)

    @property
    def lives(self) -> list[float]:
        """How long each closed one lived, shortest first."""
        return sorted(self.closed[s] - self.opened[s] for s in self.closed)

    def close(self) -> None:
        self.selector.close()
        for sock in self.opened:
            sock.close()


def test_a_slowloris_on_the_terminated_port_is_cut_off_and_others_are_served(
    launch: Launcher, pki: PKI
) -> None:
    """2,000 connections that never handshake cost nothing lasting.

    With ``handshake_timeout = 2`` (and the balancer allowed enough open
    files, through prlimit), 2,000 connections are opened on 5061 and say
    nothing.  TLS clients opened in the middle of them, and after them, are
    served.  Each idle connection is closed by the balancer (EOF or reset
    seen on the client's socket) within 2 s plus a margin of its opening,
    and none before 2 s; each is logged, in one line and a count (issue 11:
    a line each before); and the balancer's count of open connections on
    5061 comes back to 0.
    """
    with open_files(3 * SLOWLORIS) as limit:
        start_server(launch, pki, FE01, "fe01.example.com")
        config = launch.write("pool.ini", hostile_ini({"fe01": FE01}))
        twistd = str(Path(sys.executable).with_name("twistd"))
        balancer = launch.spawn(
            "twistd",
            [
                *("prlimit", f"--nofile={limit}:{limit}", twistd, "--nodaemon"),
                *("--pidfile=", "ocsbal", "--config", str(config)),
            ],
        )
        wait_listening(VIP, SIPS, balancer)
        context = client_context(pki)
        idle = Idle()
        try:
            for n in range(5):
                idle.open(SLOWLORIS // 5)
                with open_tls(context) as tls:  # while the idle ones wait
                    registered(tls, n, "during")
            took = time.monotonic() - min(idle.opened.values())
            idle.wait_closed(max(idle.opened.values()) + HANDSHAKE_TIMEOUT + MARGIN)
        finally:
            idle.close()
        with open_tls(context) as tls:
            registered(tls, 1, "after")
        wait_until(lambda: active(SIPS) == 0, "every connection on 5061 closed")

    lives = idle.lives
    print(
        f"slowloris: {SLOWLORIS} opened in {took:.1f} s; closed after "
        f"{lives[0]:.2f} to {lives[-1]:.2f} s (median {lives[len(lives) // 2]:.2f} s)"
    )
    assert len(lives) == SLOWLORIS, f"{SLOWLORIS - len(lives)} never closed"
    assert lives[0] > HANDSHAKE_TIMEOUT - 0.1
    assert lives[-1] < HANDSHAKE_TIMEOUT + MARGIN
    balancer.assert_stops_cleanly()  # which writes the counts held
    timeouts = "no TLS handshake within 2 s"
    assert told(balancer.output, timeouts) == SLOWLORIS
    # One, and a count or two, from each worker: each limits its own lines.
    workers = worker_count(parse(config.read_text()))
    assert balancer.output.count(timeouts) <= 3 * workers
    assert "Traceback" not in balancer.output


def old_tls_context(pki: PKI, newest: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers TLS 1.0 up to ``newest`` (OpenSSL 3 needs SECLEVEL 0)."""
    context = client_context(pki)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = newest
    return context


def test_only_tls_1_2_or_later_is_spoken_on_either_side(
    launch: Launcher, pki: PKI
) -> None:
    """TLS 1.0 and 1.1 are refused by the terminated port, and to servers.

    A client offering at most TLS 1.0, or 1.1, fails its handshake with the
    balancer (logged, naming the protocol); the same client
    allowed up to 1.2 gets 1.2, which shows it really offered the old ones.
    A server that speaks at most TLS 1.1 (fe02, which such a client reaches
    directly) is never used: the client's connection is refused with the
    reason logged.
    """
    start_server(launch, pki, FE01, "fe01.example.com")
    start_server(launch, pki, "127.0.82.12", "fe02.example.com", "1.1")
    balancer = launch.balancer(hostile_ini({"fe01": FE01}))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]
    for newest in old:
        with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNSUPPORTED"):
            open_tls(old_tls_context(pki, newest))
    with open_tls(old_tls_context(pki, ssl.TLSVersion.TLSv1_2)) as tls:
        assert tls.version() == "TLSv1.2"
        registered(tls, 1)
    balancer.assert_stops_cleanly()  # which writes the counts held
    output = balancer.output
    assert told(output, "dropped") == 2, output
    assert told(output, "dropped: TLS handshake failed: unsupported protocol") == 2

    # The TLS 1.1 server: a client reaches it directly with TLS 1.1 ...
    servers_ca = pki.client_context(pki.servers_ca)
    servers_ca.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        servers_ca.minimum_version = ssl.TLSVersion.TLSv1_1
    raw = socket.create_connection(("127.0.82.12", SIPS), WAIT)
    with servers_ca.wrap_socket(raw, server_hostname="fe02.example.com") as direct:
        assert direct.version() == "TLSv1.1"
    # ... but the balancer will not talk to it.
    balancer = launch.balancer(hostile_ini({"fe02": "127.0.82.12"}))
    with open_tls(client_context(pki)) as tls, pytest.raises(ConnectionError):
        registered(tls, 1)
    # A worker's lines reach the log through the control process.
    wait_until(lambda: "to server fe02" in balancer.output, "the failure logged")
    failed = [line for line in balancer.output.splitlines() if "to server fe02" in line]
    # fe02 refuses the balancer's offer: TLS 1.2 and later only.
    assert "TLS handshake failed" in failed[0], failed
    assert "protocol version" in failed[0], failed
    balancer.assert_stops_cleanly()


def test_server_certificates_are_verified_without_a_trust_setting(
    launch: Launcher, pki: PKI
) -> None:
    """Verification is on by default: without ``trust``, the system's CAs decide.

    (A server certificate naming someone else, and one from an authority
    not in ``trust``, are refused in test_tls_live.py and test_tls.py; this
    is the case where ``trust`` is left out.)  fe01's certificate is right
    for its name but signed by a private authority the system does not
    know: the balancer's handshake with it fails, the failure is logged,
    and the client, with no other server to go to, is rejected.
    """
    start_server(launch, pki, FE01, "fe01.example.com")
    balancer = launch.balancer(hostile_ini({"fe01": FE01}, trust=False))
    with open_tls(client_context(pki)) as tls, pytest.raises(ConnectionError):
        registered(tls, 1)
    # A worker's lines reach the log through the control process.
    wait_until(lambda: "to server fe01" in balancer.output, "the failure logged")
    failed = [line for line in balancer.output.splitlines() if "to server fe01" in line]
    assert "certificate verify failed" in failed[0], failed
    balancer.assert_stops_cleanly()


def test_a_rejected_tls_client_is_let_go(launch: Launcher, pki: PKI) -> None:
    """A TLS client that no server can take is closed, and forgotten, at once.

    fe01 (127.0.82.13) does not listen, so the client, its handshake with
    the balancer done, is rejected: it reads the end of the stream and
    closes.  The balancer must then count no open connection on 5061 (and
    stop without waiting for one), as it does on a plain port.
    """
    balancer = launch.balancer(hostile_ini({"fe01": "127.0.82.13"}))
    with open_tls(client_context(pki)) as tls, pytest.raises(ConnectionError):
        registered(tls, 1)
    # A worker's lines reach the log through the control process.
    wait_until(lambda: "rejected connection" in balancer.output, "the rejection logged")
    wait_until(lambda: active(SIPS) == 0, "the rejected client let go", within=5)
    stopping = time.monotonic()
    balancer.assert_stops_cleanly()
    assert time.monotonic() - stopping < 3


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_twistd_binds_port_444_as_root_then_runs_as_nobody(launch: Launcher) -> None:
    """``twistd --uid nobody --gid nogroup`` binds below 1024, then drops root.

    The pool's only port is 444.  The balancer binds it while still root,
    then runs as nobody:nogroup, with no supplementary group and no
    capability left (/proc/PID/status), and the port relays.
    """
    require_root("binding port 444")
    vip, servers = "127.0.82.20", {"fe1": ("127.0.82.21", 1)}
    ini = pool_ini(vip, servers, {444: "tcp"})
    launch.servers(ini)
    config = launch.write("pool.ini", ini)
    twistd = str(Path(sys.executable).with_name("twistd"))
    balancer = launch.spawn(
        "twistd",
        [
            *(twistd, "--nodaemon", "--pidfile=", "--uid", "nobody"),
            *("--gid", "nogroup", "ocsbal", "--config", str(config)),
        ],
    )
    wait_listening(vip, 444, balancer)
    # The port listens (as root) a moment before twistd gives root up.
    pid = balancer.popen.pid
    wait_until(lambda: proc_status(pid)["Uid"].split()[0] != "0", "root given up")
    status = proc_status(pid)
    assert status["Uid"].split() == ["65534"] * 4, status["Uid"]
    assert status["Gid"].split() == ["65534"] * 4, status["Gid"]
    assert status["Groups"].split() == ["65534"], status["Groups"]
    assert int(status["CapEff"], 16) == 0, status["CapEff"]
    with connect(vip, 444) as sock:
        assert echoed(sock, b"hello through 444\r\n" * 100, seed=1) == (
            b"hello through 444\r\n" * 100
        )
    balancer.assert_stops_cleanly()


def test_the_admin_token_never_appears_in_the_log(launch: Launcher, pki: PKI) -> None:
    """The token is never logged, whatever is asked and however it goes.

    A balancer with an admin token file serves authorized requests (Bearer
    and Basic), refuses unauthorized ones (no token, a wrong one, the
    token's first half, the token in a wrong scheme), refuses bad changes
    made with the token, and reloads on SIGHUP (the file read again).  Its
    whole log, from start to stop, never contains the token.
    """
    token = secrets.token_hex(32)
    (launch.tmp_path / "admin.token").write_text(token + "\n")
    start_server(launch, pki, FE01, "fe01.example.com")
    ini = hostile_ini(
        {"fe01": FE01}, admin=f"token_file = {launch.tmp_path / 'admin.token'}"
    )
    balancer = launch.balancer(ini)

    def call(
        method: str, path: str, auth: str | None, body: bytes | None = None
    ) -> int:
        request = urllib.request.Request(
            f"http://{ADMIN}{path}", data=body, method=method
        )
        if method != "GET":
            request.add_header("Content-Type", "application/json")
        if auth is not None:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return e.code

    basic = base64.b64encode(f"admin:{token}".encode()).decode()
    bearer = f"Bearer {token}"
    assert call("GET", "/api/pool", bearer) == 200
    assert call("GET", "/", f"Basic {basic}") == 200
    assert call("GET", "/metrics", bearer) == 200
    assert call("GET", "/api/pool", None) == 401
    assert call("GET", "/api/pool", "Bearer wrong") == 401
    assert call("GET", "/api/pool", f"Bearer {token[:32]}") == 401
    assert call("GET", "/api/pool", f"Token {token}") == 401
    assert call("POST", "/api/servers", None, b'{"name": "x"}') == 401
    assert call("POST", "/api/servers", bearer, b'{"name": 1}') == 400
    assert call("PATCH", "/api/servers/nope", bearer, b"{}") == 404
    assert call("DELETE", "/api/servers/fe01", bearer) == 409
    balancer.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload" in balancer.output.lower(), "the reload logged")
    assert call("GET", "/api/servers", bearer) == 200
    with open_tls(client_context(pki)) as tls:
        registered(tls, 1)
    balancer.assert_stops_cleanly()
    assert token not in balancer.output
    assert token[:16] not in balancer.output


def test_no_web_page_can_drive_the_admin_api(launch: Launcher, pki: PKI) -> None:
    """Issue 11, as found against a running twistd with no token: a page's
    ``fetch(..., {mode: "no-cors"})`` (a text/plain POST, no preflight) added
    a server with weight 65535, and a page reaching the interface through a
    name of its own (DNS rebinding) read the connections and put a server in
    maintenance.  Each is a 403 now, and nothing changes."""
    start_server(launch, pki, FE01, "fe01.example.com")
    launch.balancer(hostile_ini({"fe01": FE01}))
    port = ADMIN.split(":")[1]

    def ask(method: str, path: str, headers: dict[str, str], body: object = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{ADMIN}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    page = {"content-type": "text/plain", "origin": "http://attacker.example"}
    evil = {"name": "evil", "address": "127.0.82.66", "weight": 65535}
    status, answer = ask("POST", "/api/servers", page, evil)
    assert status == 403, answer
    assert "attacker.example" in answer["error"]
    rebound = {"host": f"attacker.example:{port}", "content-type": "application/json"}
    assert ask("GET", "/api/connections", rebound)[0] == 403
    assert ask("PATCH", "/api/servers/fe01", rebound, {"state": "maint"})[0] == 403
    _, servers = admin_call(ADMIN, "GET", "/api/servers")
    assert [(s["name"], s["state"]) for s in servers] == [("fe01", "ready")]
    assert admin_call(ADMIN, "PATCH", "/api/servers/fe01", {"weight": 3})[0] == 200
