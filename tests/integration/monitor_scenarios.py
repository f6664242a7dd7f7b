"""Runs each monitor against real loopback peers; prints the results as JSON.

Run by test_monitors_live.py in its own process, so the real reactor runs
here and not in pytest.  Peers: a TLS server (trustme certificate), a plain
TCP server that accepts and never speaks, an HTTPS site, and a SIP server
over TLS answering 200 to every OPTIONS.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import react
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.util import Redirect

from ocsbal._tls import TLSContexts
from ocsbal.config import Server, TLSSettings
from ocsbal.monitors import HTTPSMonitor, SIPOptionsMonitor, TCPMonitor, TLSMonitor

GOOD, SILENT, CLOSED, GREETER = (
    Server(n, f"127.0.32.1{i}") for i, n in enumerate("abcd", 1)
)
TLS_PORT, SIPS_PORT, HTTPS_PORT = 16061, 16062, 16443
TIMEOUT = 1.0


class Silent(Protocol):
    """Accepts and never says anything."""


class Greeter(Protocol):
    """Speaks plain text at once, as a non-TLS service does."""

    def connectionMade(self) -> None:
        self.transport.write(b"220 hello, this is not TLS\r\n")


class SIPAnswer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")


class Status(Resource):
    isLeaf = True

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        return b"status"


def listen(reactor: Any, ca: trustme.CA) -> None:
    cert = ca.issue_cert("127.0.32.11")
    tls = cert.private_key_and_cert_chain_pem.bytes()
    from twisted.internet.ssl import PrivateCertificate

    options = PrivateCertificate.loadPEM(tls.decode()).options()
    root = Resource()
    root.putChild(b"ok", Status(200))
    root.putChild(b"broken", Status(500))
    root.putChild(b"moved", Redirect(b"/ok"))
    for port, factory in [
        (TLS_PORT, Factory.forProtocol(Silent)),
        (SIPS_PORT, Factory.forProtocol(SIPAnswer)),
        (HTTPS_PORT, Site(root)),
    ]:
        reactor.listenSSL(port, factory, options, interface=GOOD.address)
        reactor.listenTCP(port, Factory.forProtocol(Silent), interface=SILENT.address)
        reactor.listenTCP(port, Factory.forProtocol(Greeter), interface=GREETER.address)


async def check(monitor: Any, server: Server) -> dict[str, Any]:
    started = time.monotonic()
    try:
        await monitor.check(server)
        result = "ok"
    except Exception as e:
        result = str(e)
    return {"result": result, "seconds": round(time.monotonic() - started, 2)}


def relays_tls(trusted: trustme.CA) -> TLSContexts:
    """The relay's TLS of a pool terminating it, trusting ``trusted``."""
    pool = trustme.CA().issue_cert("p.example.com")
    with tempfile.TemporaryDirectory() as name:  # read when built
        folder = Path(name)
        pool.private_key_and_cert_chain_pem.write_to_path(folder / "pool.pem")
        trusted.cert_pem.write_to_path(folder / "trust.pem")
        settings = TLSSettings(
            "terminate", str(folder / "pool.pem"), str(folder / "trust.pem")
        )
        return TLSContexts(settings, "p.example.com")


async def main(reactor: Any) -> None:
    ca = trustme.CA()
    listen(reactor, ca)
    verified, untrusting = relays_tls(ca), relays_tls(trustme.CA())
    misnamed = Server("a", GOOD.address, tls_name="fe9.example.com")
    sip = SIPOptionsMonitor(
        reactor, (SIPS_PORT,), TIMEOUT, "p.example.com", frozenset({SIPS_PORT})
    )
    verified_sip = SIPOptionsMonitor(
        reactor,
        (SIPS_PORT,),
        TIMEOUT,
        "p.example.com",
        frozenset({SIPS_PORT}),
        verified.connecting,
    )
    verifying = TLSMonitor(reactor, (TLS_PORT,), TIMEOUT, verified.connecting)
    distrusting = TLSMonitor(reactor, (TLS_PORT,), TIMEOUT, untrusting.connecting)
    plain_sip = SIPOptionsMonitor(reactor, (SIPS_PORT,), TIMEOUT, "p.example.com")
    scenarios = {
        "tcp-good": (TCPMonitor(reactor, (TLS_PORT,), TIMEOUT), GOOD),
        "tcp-closed": (TCPMonitor(reactor, (TLS_PORT,), TIMEOUT), CLOSED),
        "tls-good": (TLSMonitor(reactor, (TLS_PORT,), TIMEOUT), GOOD),
        "tls-plain-server": (TLSMonitor(reactor, (TLS_PORT,), TIMEOUT), SILENT),
        "tls-closed": (TLSMonitor(reactor, (TLS_PORT,), TIMEOUT), CLOSED),
        "tls-plain-text": (TLSMonitor(reactor, (TLS_PORT,), TIMEOUT), GREETER),
        "tls-verified": (verifying, GOOD),
        "tls-verified-wrong-name": (verifying, misnamed),
        "tls-verified-untrusted": (distrusting, GOOD),
        "sips-good": (sip, GOOD),
        "sips-verified": (verified_sip, GOOD),
        "sips-verified-wrong-name": (verified_sip, misnamed),
        "sips-silent": (sip, SILENT),
        "sip-plain-to-tls": (plain_sip, GOOD),
        "https-ok": (HTTPSMonitor(reactor, (HTTPS_PORT,), TIMEOUT, "/ok"), GOOD),
        "https-moved": (HTTPSMonitor(reactor, (HTTPS_PORT,), TIMEOUT, "/moved"), GOOD),
        "https-broken": (
            HTTPSMonitor(reactor, (HTTPS_PORT,), TIMEOUT, "/broken"),
            GOOD,
        ),
        "https-silent": (HTTPSMonitor(reactor, (HTTPS_PORT,), TIMEOUT, "/"), SILENT),
        "https-plain-text": (
            HTTPSMonitor(reactor, (HTTPS_PORT,), TIMEOUT, "/"),
            GREETER,
        ),
    }
    results = {}
    for name, (monitor, server) in scenarios.items():
        results[name] = await check(monitor, server)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor)))
