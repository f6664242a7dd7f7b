"""A demo pool on loopback: ``python -m ocsbal.demo --config examples/demo.ini``.

For every server of the pool, a demo front end listens on the server's
address on every pool port: SIP ports (``sip`` and ``sips``) answer OPTIONS
and REGISTER with a response naming the server, every other port echoes.
The ``sips`` ports speak plain SIP here, which is enough for a demo because
the balancer passes TLS ports through untouched.  A :class:`PoolService`
balances the pool's VIP over them.

The demo front ends are also the integration tests' servers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import cast

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.wire import Echo
from zope.interface import implementer

from ocsbal._ctl import client_endpoint
from ocsbal.config import ConfigError, Pool, PortProtocol, Server, load
from ocsbal.service import PoolService
from ocsbal.sip import GaveUp, Ping, Request, SIPInspector

#: A demo server drops a client that sends a header block larger than this.
MAX_MESSAGE = 65536

_SIP_PORTS = (PortProtocol.SIP, PortProtocol.SIPS)


@implementer(IHalfCloseableProtocol)
class _AnswerBeforeClosing(Protocol):
    """Close only after answering what arrived before the client's EOF.

    Without this, Twisted drops a connection at the peer's EOF with the
    answer still unwritten, and ``echo ... | nc -q1`` sees nothing.
    """

    transport: ITransport

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


class DemoEcho(_AnswerBeforeClosing, Echo):
    """Echo every byte, then close once the client has finished sending."""


class DemoSIP(_AnswerBeforeClosing):
    """Answer SIP requests with a response naming this server.

    OPTIONS, REGISTER, and a call's INVITE and BYE get ``200 OK``, an ACK
    nothing (it is answered by nothing), other requests ``501``; a CRLFCRLF
    keep-alive ping gets its CRLF pong (RFC 5626).  Every response carries
    ``Server: ocsbal-demo NAME (ADDRESS)``.  The stream is framed as the
    relay frames it (:class:`~ocsbal.sip.SIPInspector`); what it cannot
    frame, or a header block over :data:`MAX_MESSAGE`, closes the connection.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.inspector = SIPInspector(max_header_bytes=MAX_MESSAGE)

    def dataReceived(self, data: bytes) -> None:
        """Answer every complete request received so far."""
        for event in self.inspector.feed(data):
            if isinstance(event, Ping):
                self.transport.write(b"\r\n")
            elif isinstance(event, Request) and event.method != "ACK":
                self.transport.write(self._respond(event))
            elif isinstance(event, GaveUp):
                self.transport.loseConnection()

    def _respond(self, request: Request) -> bytes:
        method = request.method
        answered = ("OPTIONS", "REGISTER", "INVITE", "BYE")
        status = "200 OK" if method in answered else "501 Not Implemented"
        copied = ["Via", "From", "To", "Call-ID", "CSeq"]
        if method == "REGISTER":
            copied += ["Contact", "Expires"]
        lines = [f"SIP/2.0 {status}"]
        for name in copied:
            lines += [f"{name}: {v}" for v in request.headers.values(name.lower())]
        lines += [
            f"Server: ocsbal-demo {self.server.name} ({self.server.address})",
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()


def demo_servers(pool: Pool) -> MultiService:
    """A service running a demo front end for every server on every pool port.

    :param pool: the pool whose servers and ports to serve.
    """
    servers = MultiService()
    for server in pool.servers:
        for port in pool.ports:
            factory = (
                Factory.forProtocol(partial(DemoSIP, server))
                if port.protocol in _SIP_PORTS
                else Factory.forProtocol(DemoEcho)
            )
            address = server.address.replace(":", r"\:")
            endpoint = f"tcp:{port.number}:interface={address}"
            strports.service(endpoint, factory).setServiceParent(servers)
    return servers


def _url(endpoint: str) -> str:
    """Where a browser finds the admin interface at a client endpoint."""
    kind, *parts = endpoint.split(":")
    options = dict(part.split("=", 1) for part in parts)
    if kind != "tcp":
        return endpoint
    return f"http://{options['host']}:{options['port']}/"


def tour(pool: Pool) -> str:
    """What a newcomer can type to see the demo pool balance."""
    sip = next(p.number for p in pool.ports if p.protocol is PortProtocol.SIP)
    other = next(p.number for p in pool.ports if p.protocol is PortProtocol.TCP)
    servers = ", ".join(f"{s.name} {s.address}" for s in pool.servers)
    options = (
        rf"OPTIONS sip:{pool.fqdn} SIP/2.0\r\nCall-ID: demo-%s\r\n"
        r"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    admin = ""
    if pool.admin is not None:
        endpoint = client_endpoint(pool.admin.listen)
        ctl = f".venv/bin/ocsbal ctl --admin {endpoint}"
        admin = (
            f"\nThe admin interface (status page, JSON API) is on {_url(endpoint)}.  "
            f"From a shell:\n\n"
            f"  {ctl} servers\n"
            f"  {ctl} drain {pool.servers[0].name}   # and: ready, weight, remove\n"
        )
    return f"""\
ocsbal demo: pool {pool.name} ({pool.fqdn}), VIP {pool.vip}, \
{len(pool.ports)} ports, scheduler {pool.scheduler}
servers: {servers}

Each connection goes to one server; the answer names it.  Try:

  for i in 1 2 3 4 5 6; do
    printf '{options}' $i | nc -q1 {pool.vip} {sip} | grep Server
  done

  echo hello | nc -q1 {pool.vip} {other}     # the other ports echo

  .venv/bin/ocsbal check examples/pool.ini   # validate a real pool
{admin}
Ctrl-C stops the demo.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo pool in the foreground until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m ocsbal.demo")
    parser.add_argument("--config", default="examples/demo.ini")
    parser.add_argument(
        "--servers-only",
        action="store_true",
        help="run only the demo front ends, not the balancer (to put them "
        "behind another balancer, or behind twistd ocsbal)",
    )
    args = parser.parse_args(argv)
    try:
        pool = load(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1

    from twisted.internet import reactor

    # The balancer's own messages (start, rejected and idle connections), and
    # only warnings from the three dozen demo listeners.
    shown = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    shown.setLogLevelForNamespace("ocsbal", LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [shown])],
        redirectStandardIO=False,
    )
    top = MultiService()
    demo_servers(pool).setServiceParent(top)
    if not args.servers_only:
        PoolService(pool).setServiceParent(top)
    try:
        top.privilegedStartService()
        top.startService()
    except CannotListenError as e:
        print(f"ocsbal demo: {e}", file=sys.stderr)
        print("(ports below 1024 need root)", file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", cast(IService, top).stopService)
    if args.servers_only:
        print(f"ocsbal demo: {len(pool.servers)} demo servers running", flush=True)
    else:
        print(tour(pool), flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
