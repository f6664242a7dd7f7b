"""The health monitors: how one server is checked once.

Each monitor provides :class:`ocsbal.health.IMonitor` and checks every
heartbeat port of a server at once; the server is healthy only if every
port passes.  A check never outlives the monitor's timeout: connecting,
handshaking, asking and reading the answer all fit in it, and a connection
still open when it runs out is aborted.

- :class:`TCPMonitor`: OCS 2007 R2's heartbeat, a TCP connection
  established and closed.
- :class:`TLSMonitor`: a TLS handshake completed.
- :class:`SIPOptionsMonitor`: a SIP OPTIONS answered with a final response
  (over TLS on the pool's ``sips`` ports): it catches a server whose port is
  open but whose SIP stack is hung.
- :class:`HTTPSMonitor`: an HTTPS GET answered 2xx or 3xx.

Where the pool terminates TLS (``[tls] mode = terminate``), the ``tls`` and
``sip-options`` checks verify each server's certificate exactly as the relay
does (against ``[tls] trust``, for the server's ``tls_name``), so a server
the relay would refuse fails its checks, with the reason.  Otherwise (TLS
passed through, which the relay does not look into) and for ``https``, a
check proves that the server speaks TLS, not who it is
(:func:`unverified_tls`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs
import treq
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    gatherResults,
)
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    TCPTimedOutError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from ocsbal._checks import HealthChecks
from ocsbal._endpoints import ReactorTCPTime, failed_here, server_endpoint, url_host
from ocsbal._model import MonitorType, PortProtocol
from ocsbal._tls import TLSContexts, tls_reason
from ocsbal.health import CheckNotMadeError, IMonitor
from ocsbal.sip import GaveUp, Response, SIPInspector

if TYPE_CHECKING:
    from ocsbal._model import Pool, Server

__all__ = [
    "HTTPSMonitor",
    "HealthChecks",
    "HeartbeatError",
    "SIPOptionsMonitor",
    "SIPStatusReader",
    "TCPMonitor",
    "TLSFor",
    "TLSMonitor",
    "Unverified",
    "monitor_for",
    "unverified_tls",
]


class HeartbeatError(Exception):
    """A heartbeat failed; the message says on which port and why."""


def unverified_tls() -> CertificateOptions:
    """TLS 1.2 or later, without verifying the server's certificate."""
    return CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)


#: What to handshake with a server: for each server, a TLS client.
TLSFor = Callable[["Server"], IOpenSSLClientConnectionCreator]


@attrs.frozen
class Unverified:
    """The same unverified TLS (:func:`unverified_tls`) for every server."""

    options: CertificateOptions = attrs.Factory(unverified_tls)

    def __call__(self, server: Server) -> IOpenSSLClientConnectionCreator:  # noqa: ARG002
        """The TLS client for ``server``."""
        creator: Any = self.options  # a context factory works as a creator
        return cast(IOpenSSLClientConnectionCreator, creator)


#: A connection that took too long: the check's own timeout, or the
#: kernel's or the endpoint's.
_TIMEOUTS = (
    TimeoutError,
    ConnectTimeoutError,
    TCPTimedOutError,
    ConnectingCancelledError,
)


#: How twisted.web.client reports a request that failed on its way.
_ResponseFailed = (ResponseFailed, ResponseNeverReceived)


def _all_ports(
    ports: Sequence[int],
    probe: Callable[[int], Coroutine[Any, Any, None]],
    explain: Callable[[Exception], str],
    reactor: IReactorTime,
    timeout: float,
) -> Deferred[None]:
    """Probe every port at once, each within ``timeout``; all must pass.

    A failure becomes a :class:`HeartbeatError` naming the port and, through
    ``explain``, why.
    """

    def named(failure: Failure, port: int) -> Failure:
        error = failure.value
        if isinstance(error, HeartbeatError):
            return Failure(HeartbeatError(f"port {port} {error}"))
        if failed_here(error):
            return Failure(CheckNotMadeError(f"port {port}: {error}"))
        if isinstance(error, ConnectionRefusedError):
            why = "refused"
        elif isinstance(error, _TIMEOUTS):
            why = f"timed out after {timeout:g} s"
        elif isinstance(error, Exception):
            why = explain(error)
        else:
            return failure
        return Failure(HeartbeatError(f"port {port} {why}"))

    attempts = [
        Deferred.fromCoroutine(probe(port))
        .addTimeout(timeout, reactor)
        .addErrback(named, port)
        for port in ports
    ]
    d = gatherResults(attempts, consumeErrors=True)
    return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)


class _Conversation(Protocol):
    """One short exchange with a server; :attr:`done` says how it went.

    Cancelling :attr:`done` (the monitor's timeout does) aborts the
    connection.
    """

    transport: ITCPTransport

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred(lambda _: self.transport.abortConnection())

    def succeed(self) -> None:
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def fail(self, error: Exception) -> None:
        if not self.done.called:
            self.done.errback(error)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        if not self.done.called:
            self.done.errback(reason)


class _Connect(_Conversation):
    def connectionMade(self) -> None:
        self.succeed()


@implementer(IHandshakeListener)
class _Handshake(_Conversation):
    def handshakeCompleted(self) -> None:
        self.succeed()


class _Converser(Factory):
    # One log line per heartbeat would bury everything else.
    noisy = False

    def __init__(self, conversation: Callable[[], _Conversation]) -> None:
        self.conversation = conversation

    def buildProtocol(self, addr: object) -> _Conversation:  # noqa: ARG002
        return self.conversation()


async def _converse(
    endpoint: IStreamClientEndpoint,
    conversation: Callable[[], _Conversation],
    awaited: str,
) -> None:
    """Connect ``conversation`` through ``endpoint`` and let it run."""
    protocol = cast(_Conversation, await endpoint.connect(_Converser(conversation)))
    try:
        await protocol.done
    except CancelledError:
        # Timed out after connecting: say what never came.
        raise HeartbeatError(f"connected, but no {awaited} in time") from None


@implementer(IMonitor)
@attrs.frozen
class TCPMonitor:
    """The OCS heartbeat: a TCP connection established and closed on every port.

    :param reactor: provides TCP and the clock for the timeout.
    :param ports: the server ports that must all accept.
    :param timeout: seconds each connection may take.
    :param source: the address to check from; ``None`` lets the routing
        table choose.
    """

    reactor: ReactorTCPTime
    ports: Sequence[int]
    timeout: float
    source: str | None = None

    def check(self, server: Server) -> Deferred[None]:
        """Connect to every port of ``server`` at once; all must accept."""

        def probe(port: int) -> Coroutine[Any, Any, None]:
            endpoint = server_endpoint(
                self.reactor, server.address, port, self.timeout, self.source
            )
            return _converse(endpoint, _Connect, "connection")

        return _all_ports(self.ports, probe, str, self.reactor, self.timeout)


@implementer(IMonitor)
@attrs.frozen
class TLSMonitor:
    """A TLS handshake completed on every port.

    :param reactor: provides TCP and the clock for the timeout.
    :param ports: the server ports that must all complete a handshake.
    :param timeout: seconds each connection and handshake may take.
    :param tls: the TLS client for each server; by default it verifies
        nothing (:class:`Unverified`).
    :param source: the address to check from; ``None`` lets the routing
        table choose.
    """

    reactor: ReactorTCPTime
    ports: Sequence[int]
    timeout: float
    tls: TLSFor = attrs.Factory(Unverified)
    source: str | None = None

    def check(self, server: Server) -> Deferred[None]:
        """Handshake with every port of ``server`` at once."""

        def probe(port: int) -> Coroutine[Any, Any, None]:
            endpoint = server_endpoint(
                self.reactor, server.address, port, self.timeout, self.source
            )
            tls = wrapClientTLS(self.tls(server), endpoint)
            return _converse(tls, _Handshake, "TLS handshake completed")

        return _all_ports(self.ports, probe, tls_reason, self.reactor, self.timeout)


@attrs.define
class SIPStatusReader:
    """Reads a SIP response's status line from a stream, boundedly.

    Fed the bytes a server sends; :attr:`status` is the first final
    response's code and reason once read.  The stream is framed as the
    relay frames a server's (:class:`~ocsbal.sip.SIPInspector`), so
    provisional (1xx) responses, with their bodies, and keep-alives are
    skipped.  Anything that is not SIP, or more than ``limit`` bytes without
    a final response, is an error.
    """

    limit: int = 8192
    status: tuple[int, str] | None = None
    _inspector: SIPInspector = attrs.Factory(lambda: SIPInspector(from_server=True))
    _seen: int = 0

    def feed(self, data: bytes) -> None:
        """Read ``data``; raise :class:`HeartbeatError` if it is not SIP."""
        self._seen += len(data)
        for event in self._inspector.feed(data):
            if isinstance(event, GaveUp):
                raise HeartbeatError("answered something that is not SIP")
            if (
                isinstance(event, Response)
                and event.status >= 200
                and self.status is None
            ):
                self.status = (event.status, event.reason)
        if self.status is None and self._seen > self.limit:
            raise HeartbeatError(f"sent {self._seen} bytes and no final SIP response")


class _Options(_Conversation):
    def __init__(self, request: bytes) -> None:
        super().__init__()
        self.request = request
        self.reader = SIPStatusReader()

    def connectionMade(self) -> None:
        # Over TLS, Twisted holds this until the handshake is done.
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except HeartbeatError as e:
            self.fail(e)
            return
        if self.reader.status is None:
            return
        code, reason = self.reader.status
        if code == 503:
            self.fail(HeartbeatError(f"answered SIP {code} {reason}"))
        else:
            self.succeed()


@implementer(IMonitor)
@attrs.frozen
class SIPOptionsMonitor:
    """A SIP OPTIONS answered by a final response on every port.

    Any final response passes, except 503 Service Unavailable: an OCS front
    end answers it when it is shutting down or overloaded, which is when it
    should get no new clients.

    :param reactor: provides TCP and the clock for the timeout.
    :param ports: the server ports asked.
    :param timeout: seconds each exchange may take, connecting included.
    :param fqdn: the pool FQDN, the request's sender.
    :param tls_ports: the ports spoken to over TLS (the pool's ``sips``).
    :param tls: the TLS client for each server; by default it verifies
        nothing (:class:`Unverified`).
    :param source: the address to check from; ``None`` lets the routing
        table choose.
    """

    reactor: ReactorTCPTime
    ports: Sequence[int]
    timeout: float
    fqdn: str
    tls_ports: frozenset[int] = frozenset()
    tls: TLSFor = attrs.Factory(Unverified)
    source: str | None = None

    def check(self, server: Server) -> Deferred[None]:
        """Ask every port of ``server`` at once."""

        def probe(port: int) -> Coroutine[Any, Any, None]:
            endpoint = server_endpoint(
                self.reactor, server.address, port, self.timeout, self.source
            )
            secure = port in self.tls_ports
            if secure:
                endpoint = wrapClientTLS(self.tls(server), endpoint)
            request = self.request(server, port, secure)
            return _converse(
                endpoint, lambda: _Options(request), "final SIP response came"
            )

        return _all_ports(self.ports, probe, self._reason, self.reactor, self.timeout)

    def _reason(self, error: Exception) -> str:
        if isinstance(error, ConnectionDone | ConnectionLost):
            return "closed without a final SIP response"
        return tls_reason(error)

    def request(self, server: Server, port: int, secure: bool) -> bytes:
        """The OPTIONS request sent to ``server`` on ``port``."""
        transport = "TLS" if secure else "TCP"
        host = url_host(server.address)
        branch = "z9hG4bK" + secrets.token_hex(8)
        tag = secrets.token_hex(4)
        call_id = f"{secrets.token_hex(8)}@{self.fqdn}"
        uri = f"sip:{host}:{port};transport={transport.lower()}"
        return (
            f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {self.fqdn};branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ocsbal@{self.fqdn}>;tag={tag}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "User-Agent: ocsbal health check\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _Policy:
    tls: CertificateOptions

    def creatorForNetloc(
        self,
        hostname: bytes,  # noqa: ARG002
        port: int,  # noqa: ARG002
    ) -> IOpenSSLClientConnectionCreator:
        creator: Any = self.tls  # a context factory works as a creator
        return creator  # type: ignore[no-any-return]


@implementer(IMonitor)
@attrs.frozen
class HTTPSMonitor:
    """An HTTPS GET of ``url`` answered 2xx or 3xx on every port.

    Redirects are not followed: a 3xx is an answer.  No connection is kept
    between checks.

    :param reactor: provides TCP and the clock for the timeout.
    :param ports: the server ports asked.
    :param timeout: seconds each request may take, connecting included.
    :param url: the path asked for.
    :param tls: the client's TLS settings; see :func:`unverified_tls`.
    :param source: the address to check from; ``None`` lets the routing
        table choose.
    """

    reactor: ReactorTCPTime
    ports: Sequence[int]
    timeout: float
    url: str = "/"
    tls: CertificateOptions = attrs.Factory(unverified_tls)
    source: str | None = None

    def check(self, server: Server) -> Deferred[None]:
        """GET ``url`` from every port of ``server`` at once."""
        agent = Agent(
            self.reactor,
            contextFactory=_Policy(self.tls),
            connectTimeout=self.timeout,
            bindAddress=None if self.source is None else (self.source, 0),
            pool=HTTPConnectionPool(self.reactor, persistent=False),
        )
        client = treq.client.HTTPClient(agent)
        host = url_host(server.address)

        async def probe(port: int) -> None:
            try:
                response = await client.get(f"https://{host}:{port}{self.url}")
                await treq.content(response)
            except _ResponseFailed as e:
                # The request's failures come wrapped, one per attempt.
                reason = e.reasons[0].value
                if isinstance(reason, CancelledError):
                    raise HeartbeatError(
                        "connected, but no HTTP response in time"
                    ) from None
                raise HeartbeatError(tls_reason(reason)) from None
            if not 200 <= response.code < 400:
                raise HeartbeatError(f"GET {self.url} answered HTTP {response.code}")

        return _all_ports(self.ports, probe, tls_reason, self.reactor, self.timeout)


def monitor_for(
    pool: Pool, reactor: ReactorTCPTime, tls: TLSContexts | None = None
) -> IMonitor:
    """The monitor ``pool``'s ``[monitor]`` section describes.

    :param tls: the relay's TLS, where the pool terminates it: ``tls`` and
        ``sip-options`` checks then verify each server as the relay does.
    """
    monitor = pool.monitor
    ports, timeout = pool.heartbeat_ports, monitor.timeout
    # With half-NAT the checks, being no client's, come from this host.
    source = pool.source[0] if pool.source else None
    client: TLSFor = Unverified() if tls is None else tls.connecting
    if monitor.type is MonitorType.TLS:
        return TLSMonitor(reactor, ports, timeout, client, source)
    if monitor.type is MonitorType.SIP_OPTIONS:
        sips = frozenset(
            p.number for p in pool.ports if p.protocol is PortProtocol.SIPS
        )
        return SIPOptionsMonitor(
            reactor, ports, timeout, pool.fqdn, sips, client, source
        )
    if monitor.type is MonitorType.HTTPS:
        return HTTPSMonitor(reactor, ports, timeout, monitor.url, source=source)
    return TCPMonitor(reactor, ports, timeout, source)
