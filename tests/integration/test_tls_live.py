"""TLS on a ``sips`` port through a live balancer: terminated, and passed through.

Real processes on loopback, in 127.0.51.0/24 only: ``twistd -n ocsbal`` on
the VIP 127.0.51.10 and, on .11, .12 and .13, a small TLS SIP server (the
script below, one process each) that presents a certificate of its own
name and answers every request.  Two authorities from trustme: one signs
the pool's certificate, which the clients trust; the other signs the
servers' certificates, which the balancer trusts (``[tls] trust``).  The
clients are the standard library's ``ssl``, bound to 127.0.51.1.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness import WAIT, Launcher, Process, admin_call, wait_listening

VIP = "127.0.51.10"
CLIENT = "127.0.51.1"  # every client connection comes from here
ADMIN = "127.0.51.1:19901"
FQDN = "itest.example.com"  # the pool fqdn, as harness.pool_ini writes it
SIPS = 5061

#: A TLS SIP server, run as ``python SCRIPT ADDRESS PORT PEM NAME``.
#:
#: It presents the key and certificate of PEM and answers every request it
#: reads (framed by the blank line and Content-Length) with 200 OK, echoing
#: Via, From, To, Call-ID and CSeq, saying ``Server: NAME``, granting a
#: REGISTER's Contact 900 s, and carrying the request, byte for byte, as its
#: body.  Each answer is printed as a JSON line with the SHA-256 of the
#: request read and of the response written, so a test can tell that both
#: crossed the balancer unchanged.
SERVER = r'''
import hashlib, json, re, socket, ssl, sys, threading

address, port, pem, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(pem)
printing = threading.Lock()


def say(**event):
    with printing:
        print(json.dumps(event), flush=True)


def header(head, *names):
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() in names:
            return value.strip()
    return None


def read_message(conn, buffer):
    """The next message and what follows it; None at the end of the stream."""
    while b"\r\n\r\n" not in buffer.lstrip(b"\r\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return None, buffer
        buffer += chunk
    head, _, rest = buffer.lstrip(b"\r\n").partition(b"\r\n\r\n")
    length = int(header(head, b"content-length", b"l") or 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, buffer
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def answer(request):
    head = request.partition(b"\r\n\r\n")[0]
    method = head.split(b" ", 1)[0]
    lines = [b"SIP/2.0 200 OK"]
    for key in (b"Via", b"From", b"To", b"Call-ID", b"CSeq"):
        value = header(head, key.lower())
        if value is not None:
            lines.append(key + b": " + value)
    lines.append(b"Server: " + name.encode())
    contact = re.search(rb"<[^>]*>", header(head, b"contact", b"m") or b"")
    if method == b"REGISTER" and contact:
        lines.append(b"Contact: " + contact[0] + b";expires=900")
    lines += [b"Content-Type: message/sip", b"Content-Length: %d" % len(request)]
    return method, b"\r\n".join(lines) + b"\r\n\r\n" + request


def serve(raw, peer):
    with raw:
        raw.settimeout(30)
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except OSError as e:  # a TCP health check, or a peer that gave up
            say(server=name, event="handshake failed", peer=peer, reason=str(e))
            return
        with conn:
            buffer = b""
            try:
                while True:
                    request, buffer = read_message(conn, buffer)
                    if request is None:
                        return
                    method, response = answer(request)
                    # Said first: once the client has its answer, it is in the log.
                    say(
                        server=name,
                        event="answered",
                        method=method.decode(),
                        request=hashlib.sha256(request).hexdigest(),
                        response=hashlib.sha256(response).hexdigest(),
                    )
                    conn.sendall(response)
            except OSError as e:
                say(server=name, event="closed", peer=peer, reason=str(e))


listener = socket.create_server((address, port))
while True:
    raw, peer = listener.accept()
    threading.Thread(target=serve, args=(raw, peer[1]), daemon=True).start()
'''


class PKI:
    """The test's certificates, as PEM files in ``directory``.

    ``clients_ca`` signs the pool's certificate (``pool.pem``, for the pool
    fqdn); ``servers_ca`` signs the servers' certificates and is what the
    balancer trusts (``servers-ca.pem``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clients_ca = trustme.CA()
        self.servers_ca = trustme.CA()
        pool = self.clients_ca.issue_cert(FQDN)
        pool.private_key_and_cert_chain_pem.write_to_path(str(directory / "pool.pem"))
        self.servers_ca.cert_pem.write_to_path(str(directory / "servers-ca.pem"))

    def server_pem(self, name: str) -> Path:
        """A key and certificate chain for ``name``, signed by ``servers_ca``."""
        path = self.directory / f"{name}.pem"
        certificate = self.servers_ca.issue_cert(name)
        certificate.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def client_context(self, ca: trustme.CA) -> ssl.SSLContext:
        """A client's TLS: it trusts only ``ca`` and checks the host name."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def tls_server(launch: Launcher, pki: PKI, address: str, name: str) -> Process:
    """Start the TLS SIP server on ``address`` with a certificate for ``name``."""
    script = launch.tmp_path / "tls_sip_server.py"
    if not script.exists():
        script.write_text(SERVER)
    pem = pki.server_pem(name)
    process = launch.spawn(
        name, [sys.executable, str(script), address, str(SIPS), str(pem), name]
    )
    wait_listening(address, SIPS, process)
    return process


def tls_pool_ini(mode: str, servers: dict[str, str], workers: str = "auto") -> str:
    """A pool on the VIP's port 5061 (sips) with TLS ``mode`` and the admin API.

    ``servers`` maps a name to its address; server NAME's certificate is
    checked for ``NAME.example.com``.  Files are named relative to the ini.
    """
    lines = ["[pool]", "name = itest", f"fqdn = {FQDN}", f"vip = {VIP}"]
    lines += ["scheduler = round-robin", f"workers = {workers}"]
    lines += ["", "[ports]", f"{SIPS} = sips"]
    for name, address in servers.items():
        lines += ["", f"[server:{name}]", f"address = {address}"]
        lines += [f"tls_name = {name}.example.com"]
    lines += ["", "[tls]", f"mode = {mode}"]
    if mode == "terminate":
        lines += ["certificate = pool.pem", "trust = servers-ca.pem"]
    host, port = ADMIN.split(":")
    lines += ["", "[admin]", f"listen = tcp:{port}:interface={host}"]
    return "\n".join(lines) + "\n"


def open_tls(context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    """A new TLS connection to the VIP's sips port, from ``CLIENT``."""
    raw = socket.create_connection((VIP, SIPS), WAIT, source_address=(CLIENT, 0))
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def register(n: int) -> bytes:
    """A REGISTER for ``sip:uN@example.com`` with an ``n``-dependent binary body.

    The bodies run from 1 byte to tens of kilobytes, so some span several TLS
    records, and hold blank lines and bytes that are not text.
    """
    body = random.Random(n).randbytes(1 + 9000 * n) + b"\r\n\r\nnot a header\r\n"
    head = (
        f"REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {CLIENT};branch=z9hG4bK{n}\r\n"
        f"From: <sip:u{n}@example.com>;tag={n}\r\nTo: <sip:u{n}@example.com>\r\n"
        f"Call-ID: {n}@itest\r\nCSeq: {n + 1} REGISTER\r\n"
        f"Contact: <sip:u{n}@{CLIENT}:5061;transport=tls>\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
    )
    return head.encode() + b"\r\n" + body


def exchange(sock: ssl.SSLSocket, request: bytes) -> bytes:
    """Send ``request``; return the whole response, head and body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += receive(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
    assert found, head
    length = int(found[1])
    while len(body) < length:
        body += receive(sock)
    assert len(body) == length, "more than one response"
    return head + b"\r\n\r\n" + body


def receive(sock: ssl.SSLSocket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the balancer closed the connection")
    return chunk


def header(response: bytes, name: str) -> str:
    head = response.partition(b"\r\n\r\n")[0].decode()
    return next(h for h in head.split("\r\n") if h.startswith(f"{name}:")).split()[1]


def answers(server: Process) -> list[dict[str, Any]]:
    """What the TLS SIP server answered, one entry a request."""
    output = server.output
    try:
        events = [json.loads(line) for line in output.splitlines() if line]
    except json.JSONDecodeError:
        pytest.fail(f"the TLS SIP server said something unexpected:\n{output}")
    return [e for e in events if e["event"] == "answered"]


def connection(sock: socket.socket) -> dict[str, Any]:
    """The admin API's report of the connection whose client end is ``sock``."""
    status, connections = admin_call(ADMIN, "GET", "/api/connections")
    assert status == 200, connections
    me = "{}:{}".format(*sock.getsockname())
    reports: list[dict[str, Any]] = [c for c in connections if c["client"] == me]
    assert len(reports) == 1, connections
    return reports[0]


def wait_for_log(process: Process, text: str) -> str:
    """Return the first line of ``process``'s output holding ``text``."""
    end = time.monotonic() + WAIT
    while True:
        found = [line for line in process.output.splitlines() if text in line]
        if found:
            return found[0]
        assert time.monotonic() < end, f"{text!r} never logged:\n{process.output}"
        time.sleep(0.05)


def test_terminated_tls_is_spread_relayed_byte_exact_and_inspected(
    launch: Launcher, pki: PKI
) -> None:
    """Clients handshake with the pool's certificate; the SIP inside is followed.

    Six TLS clients, one connection each, reach both servers in turn over
    TLS the balancer opens itself (the clients could not verify the servers'
    certificates: they trust only the pool's authority).  Each REGISTER, its
    body binary and up to 45 kB, arrives exactly as sent, and each response
    exactly as the server wrote it, compared by hash.  While a connection is
    open, the admin API shows its REGISTER's address of record registered for
    the 900 s the server granted, and inspection on: the decrypted SIP is
    inspected as on 5060.
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    fe02 = tls_server(launch, pki, "127.0.51.12", "fe02.example.com")
    servers = {"fe01": "127.0.51.11", "fe02": "127.0.51.12"}
    # One process, whose round robin alternates the servers exactly.
    balancer = launch.balancer(tls_pool_ini("terminate", servers, workers="1"))
    context = pki.client_context(pki.clients_ca)

    answered_by: list[str] = []
    received: list[str] = []
    for n in range(6):
        request = register(n)
        with open_tls(context, FQDN) as sock:
            response = exchange(sock, request)
            assert response.startswith(b"SIP/2.0 200 OK\r\n"), response[:200]
            assert response.endswith(b"\r\n\r\n" + request)
            assert header(response, "CSeq") == str(n + 1)
            answered_by.append(header(response, "Server"))
            received.append(hashlib.sha256(response).hexdigest())

            report = connection(sock)
            assert report["protocol"] == "sips"
            assert report["server"] == answered_by[-1].split(".")[0]
            assert report["bytes_from_client"] == len(request)
            assert report["bytes_from_server"] == len(response)
            sip = report["sip"]
            assert sip["inspection"] == "on"
            assert sip["last_message"] == "200 OK (REGISTER)"
            assert list(sip["registered"]) == [f"sip:u{n}@example.com"]
            assert 890 < sip["registered"][f"sip:u{n}@example.com"] <= 900

    assert answered_by == ["fe01.example.com", "fe02.example.com"] * 3
    sent = {hashlib.sha256(register(n)).hexdigest() for n in range(6)}
    served = answers(fe01) + answers(fe02)
    assert {a["request"] for a in served} == sent
    assert sorted(a["response"] for a in served) == sorted(received)
    assert [a["server"] for a in answers(fe01)] == ["fe01.example.com"] * 3
    balancer.assert_stops_cleanly()


def test_a_server_with_a_wrong_certificate_is_never_used(
    launch: Launcher, pki: PKI
) -> None:
    """A server whose certificate names someone else is a failed attempt.

    fe03's certificate is signed by the trusted authority but issued to
    mallory.example.com, not to its tls_name fe03.example.com.  With only it
    and fe01 in the pool, every client is still served, by fe01: each
    connection the scheduler sends to fe03 goes on to fe01.  Mallory never
    reads a request, the admin API counts no connection to fe03, and the
    balancer's log says why it was refused.
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    mallory = tls_server(launch, pki, "127.0.51.13", "mallory.example.com")
    servers = {"fe01": "127.0.51.11", "fe03": "127.0.51.13"}
    # No passing health check between the failed connections resets fe03's
    # streak: the two it takes to fall (the default) take it down.
    slow_checks = "\n[monitor]\ninterval = 60\n"
    balancer = launch.balancer(tls_pool_ini("terminate", servers) + slow_checks)
    context = pki.client_context(pki.clients_ca)

    for n in range(6):
        with open_tls(context, FQDN) as sock:
            response = exchange(sock, register(n))
            assert header(response, "Server") == "fe01.example.com"

    assert len(answers(fe01)) == 6
    assert answers(mallory) == []
    _, reports = admin_call(ADMIN, "GET", "/api/servers")
    assert {s["name"]: s["total"] for s in reports} == {"fe01": 6, "fe03": 0}
    failed = wait_for_log(balancer, "to server fe03 (127.0.51.13:5061) failed")
    assert failed.endswith(
        "failed: TLS handshake failed: certificate not issued to fe03.example.com"
    ), failed
    down = wait_for_log(balancer, "server fe03 (127.0.51.13) is down")
    assert down.endswith("certificate not issued to fe03.example.com"), down
    balancer.assert_stops_cleanly()


def test_tls_checks_refuse_the_certificate_the_relay_refuses(
    launch: Launcher, pki: PKI
) -> None:
    """Issue 11: ``tls`` checks took any certificate, so mallory passed them,
    came up, failed its clients' connections, went down, and again.

    With the checks verifying as the relay does, fe03 is down from its
    first check, with the reason in /api/servers, and stays down: no client
    is ever sent to it.
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    tls_server(launch, pki, "127.0.51.13", "mallory.example.com")
    servers = {"fe01": "127.0.51.11", "fe03": "127.0.51.13"}
    checks = "\n[monitor]\ntype = tls\nports = 5061\ninterval = 1\ntimeout = 1\n"
    checks += "rise = 1\nfall = 1\n"
    balancer = launch.balancer(tls_pool_ini("terminate", servers) + checks)
    context = pki.client_context(pki.clients_ca)

    def fe03() -> dict[str, Any]:
        _, reports = admin_call(ADMIN, "GET", "/api/servers")
        return next(s for s in reports if s["name"] == "fe03")

    reason = (
        "port 5061 TLS handshake failed: certificate not issued to fe03.example.com"
    )
    end = time.monotonic() + WAIT
    while fe03()["last_check"] != reason:
        assert time.monotonic() < end, fe03()
        time.sleep(0.1)
    seen = []
    for n in range(12):  # three seconds: three checks more
        with open_tls(context, FQDN) as sock:
            assert header(exchange(sock, register(n)), "Server") == "fe01.example.com"
        seen.append(fe03()["health"])
        time.sleep(0.25)
    assert set(seen) == {"down"}
    assert fe03()["total"] == 0
    assert len(answers(fe01)) == 12
    assert "to server fe03" not in balancer.output  # no client was tried on it
    balancer.assert_stops_cleanly()


def test_a_server_that_goes_away_closes_its_terminated_client(
    launch: Launcher, pki: PKI
) -> None:
    """The client's TLS ends, with close_notify, once its server's is gone.

    Found by the benchmark: the client side let go of nothing, and Twisted's
    TLS does not close while a producer is registered, so a client whose
    server had closed waited for ever (until the idle timeout).
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    balancer = launch.balancer(tls_pool_ini("terminate", {"fe01": "127.0.51.11"}))
    with open_tls(pki.client_context(pki.clients_ca), FQDN) as sock:
        exchange(sock, register(1))
        fe01.popen.kill()
        fe01.wait()
        sock.settimeout(WAIT)
        assert sock.recv(65536) == b""  # close_notify: a clean end, not a timeout
    balancer.assert_stops_cleanly()


def test_passed_through_tls_reaches_the_server_untouched(
    launch: Launcher, pki: PKI
) -> None:
    """In passthrough the client's TLS is the server's, and nothing is inspected.

    The client handshakes with fe01 itself, through the VIP: it verifies the
    certificate of fe01.example.com against the servers' authority, and a
    client expecting the pool's certificate is refused, for the balancer
    presents none.  The REGISTER is answered by fe01 with its 900 s, yet the
    admin API reports the connection with no SIP part: encrypted bytes are
    not inspected, only counted (more of them than the plain text).
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    balancer = launch.balancer(tls_pool_ini("passthrough", {"fe01": "127.0.51.11"}))

    request = register(1)
    with open_tls(pki.client_context(pki.servers_ca), "fe01.example.com") as sock:
        response = exchange(sock, request)
        assert response.endswith(b"\r\n\r\n" + request)
        assert re.search(rb"\r\nContact: <[^>]*>;expires=900\r\n", response)
        report = connection(sock)
        assert (report["protocol"], report["server"]) == ("sips", "fe01")
        assert "sip" not in report
        assert report["bytes_from_client"] > len(request)
        assert report["bytes_from_server"] > len(response)
    [answer] = answers(fe01)
    assert answer["request"] == hashlib.sha256(request).hexdigest()
    assert answer["response"] == hashlib.sha256(response).hexdigest()

    with pytest.raises(ssl.SSLCertVerificationError):
        open_tls(pki.client_context(pki.clients_ca), FQDN)
    balancer.assert_stops_cleanly()


def test_plain_text_on_the_terminated_port_is_closed_with_one_log_line(
    launch: Launcher, pki: PKI
) -> None:
    """A client speaking plain SIP to the TLS port is dropped, and nothing else.

    Its bytes are not a ClientHello: the balancer closes the connection
    without relaying anything (no SIP answer, no server connection) and logs
    it once, naming the client.  The next TLS client is served as usual.
    """
    fe01 = tls_server(launch, pki, "127.0.51.11", "fe01.example.com")
    balancer = launch.balancer(tls_pool_ini("terminate", {"fe01": "127.0.51.11"}))
    # The harness's probe of the VIP (connected, closed) is not logged.
    before = len(balancer.output.splitlines())

    with socket.create_connection((VIP, SIPS), WAIT, (CLIENT, 0)) as plain:
        plain.sendall(register(0))
        port = plain.getsockname()[1]
        peer = f"{CLIENT}:{port}"
        reply = b""
        try:
            while chunk := plain.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # closed at once, unread bytes and all
    assert b"SIP/2.0" not in reply, reply
    line = wait_for_log(balancer, peer)
    assert f"TLS client {peer} on port 5061 dropped: TLS handshake failed" in line

    context = pki.client_context(pki.clients_ca)
    with open_tls(context, FQDN) as sock:
        response = exchange(sock, register(1))
        assert header(response, "Server") == "fe01.example.com"
    assert [a["method"] for a in answers(fe01)] == ["REGISTER"]
    assert balancer.output.splitlines()[before:] == [line]
    balancer.assert_stops_cleanly()
