"""The relay: each client connection accepted on the VIP is spliced to one server.

The splice follows :mod:`twisted.protocols.portforward` and tightens it:

- the client transport is paused from the moment it is accepted until a
  server is connected, so nothing is buffered in between;
- each transport is registered as the streaming producer of the other, so a
  slow reader pauses the fast writer and memory per connection stays bounded
  by the transports' own buffers, whatever the peers do;
- half-close passes through (:class:`IHalfCloseableProtocol`): an EOF from
  one peer shuts down writing towards the other, which may still answer;
- the relay never looks at, changes or reorders the bytes it carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ocsbal._endpoints import server_endpoint
from ocsbal._idle import IdleTimeout
from ocsbal.health import HealthState
from ocsbal.scheduling import IScheduler, NoServerAvailable

if TYPE_CHECKING:
    from ocsbal.config import Pool, Port, Server

log = Logger(namespace="ocsbal")


class ReactorTCPTime(IReactorTCP, IReactorTime):
    """The reactor features the relay needs: TCP and a clock."""


class _SplicedTransport(ITCPTransport, IPushProducer, IConsumer):
    """A TCP transport, as both producer and consumer of the other side."""


@attrs.define(eq=False)
class Backend:
    """A server of the pool at run time: its configuration and its load.

    It satisfies :class:`ocsbal.scheduling.Candidate`, so schedulers rank it
    directly.

    :ivar server: the configured server.
    :ivar health: whether it may be picked, from its health checks and from
        failed connections.
    :ivar active: connections to this server that are open or being opened.
    """

    server: Server
    health: HealthState
    active: int = 0

    @property
    def name(self) -> str:
        """The server's name, from its ``[server:NAME]`` section."""
        return self.server.name

    @property
    def weight(self) -> int:
        """The server's configured weight."""
        return self.server.weight


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One side of a splice: the client connection or the server connection.

    Everything it reads is written to its peer's transport.
    """

    transport: _SplicedTransport

    #: The other side; set when the splice is attached, before reading starts.
    peer: _Side

    def __init__(self, splice: Splice) -> None:
        self.splice = splice
        self._readClosed = False
        self._writeClosed = False
        self.lost = False

    def connectionMade(self) -> None:
        if self is self.splice.client:
            self.splice.start()

    def dataReceived(self, data: bytes) -> None:
        # One clock read per chunk is all idle accounting costs (see _idle).
        self.splice.last_activity = self.splice.clock.seconds()
        self.peer.transport.write(data)

    def readConnectionLost(self) -> None:
        self._readClosed = True
        if not self.peer.lost:
            self.peer.transport.loseWriteConnection()
        self._closeIfDone()

    def writeConnectionLost(self) -> None:
        self._writeClosed = True
        self._closeIfDone()

    def _closeIfDone(self) -> None:
        # Twisted leaves a half-closed socket open until the protocol says so.
        if self._readClosed and self._writeClosed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: ARG002, B008
        self.lost = True
        self.splice.sideLost(self)


class Splice:
    """One client connection and the server connection it is relayed to.

    :ivar last_activity: clock time of the last byte read on either side.
    :ivar backend: the server chosen, once connected.
    """

    def __init__(self, balancer: Balancer, port: Port) -> None:
        self.balancer = balancer
        self.clock = balancer.reactor
        self.port = port
        self.client = _Side(self)
        self.server: _Side | None = None
        self.backend: Backend | None = None
        self.last_activity = self.clock.seconds()
        self._connecting: Deferred[Any] | None = None
        self._expiring = False

    @property
    def peer(self) -> IAddress:
        """The client's address."""
        return self.client.transport.getPeer()

    def start(self) -> None:
        """Pause the new client connection and connect it to a server."""
        self.client.transport.pauseProducing()
        self.balancer.splices.add(self)
        ensureDeferred(self._connect()).addErrback(
            lambda f: log.failure("unexpected error relaying {peer}", f, peer=self.peer)
        )

    async def _connect(self) -> None:
        balancer = self.balancer
        pool = balancer.pool
        tried: list[Backend] = []
        reason = ""
        for _ in range(pool.retries + 1):
            candidates = [
                b for b in balancer.backends if b.health.up and b not in tried
            ]
            try:
                backend = cast(Backend, balancer.scheduler.pick(candidates))
            except NoServerAvailable as e:
                reason = str(e)
                break
            tried.append(backend)
            backend.active += 1
            side = _Side(self)
            self._connecting = balancer.endpoint(
                backend.server, self.port.number
            ).connect(_Connector(side))
            try:
                await self._connecting
            except Exception as e:
                backend.active -= 1
                if self.client.lost:
                    return
                reason = f"server {backend.name} failed: {e}"
                balancer.record(backend, False, f"a connection failed: {e}")
                log.warn(
                    "connection from {peer} to server {server} "
                    "({address}:{port}) failed: {error}",
                    peer=self.peer,
                    server=backend.name,
                    address=backend.server.address,
                    port=self.port.number,
                    error=e,
                )
                continue
            finally:
                self._connecting = None
            self._attach(backend, side)
            return
        log.warn(
            "rejected connection from {peer} to port {port}: {reason}",
            peer=self.peer,
            port=self.port.number,
            reason=reason,
        )
        self.client.transport.loseConnection()

    def _attach(self, backend: Backend, server: _Side) -> None:
        self.backend = backend
        self.server = server
        if self.client.lost:
            server.transport.loseConnection()
            return
        server.peer = self.client
        self.client.peer = server
        self.client.transport.registerProducer(server.transport, True)
        server.transport.registerProducer(self.client.transport, True)
        self.client.transport.resumeProducing()

    def sideLost(self, side: _Side) -> None:
        """Pass a close through to the other side and settle the accounts."""
        if side is self.client:
            self.balancer.forget(self)
            if self._connecting is not None:
                self._connecting.cancel()
            if self.server is not None:
                self.server.transport.loseConnection()
        else:
            cast(Backend, self.backend).active -= 1
            self.client.transport.loseConnection()

    def close(self) -> None:
        """Close both sides, after flushing what is already buffered."""
        self.client.transport.loseConnection()
        if self.server is not None:
            self.server.transport.loseConnection()

    def abort(self) -> None:
        """Close both sides at once, discarding what is buffered."""
        self.client.transport.abortConnection()
        if self.server is not None:
            self.server.transport.abortConnection()

    def expire(self) -> None:
        """Close this idle connection.

        A polite close waits for buffered data to be flushed; if a peer
        stopped reading, that never happens, so a splice still here at the
        next sweep is aborted.
        """
        if self._expiring:
            self.abort()
            return
        self._expiring = True
        log.info(
            "closing idle connection from {peer} on port {port}",
            peer=self.peer,
            port=self.port.number,
        )
        self.close()


class _Connector(Factory):
    """Connects one server side; quiet, unlike ``connectProtocol``'s factory.

    A noisy factory logs its start and stop: two lines for every relayed
    connection.
    """

    noisy = False

    def __init__(self, side: _Side) -> None:
        self.side = side

    def buildProtocol(self, addr: IAddress | None) -> _Side:  # noqa: ARG002
        return self.side


class _Listener(ServerFactory):
    """Accepts client connections on one VIP port."""

    # The port already logs that it listens; the factory would say it again.
    noisy = False

    def __init__(self, balancer: Balancer, port: Port) -> None:
        self.balancer = balancer
        self.port = port

    def buildProtocol(self, addr: IAddress | None) -> _Side:  # noqa: ARG002
        return Splice(self.balancer, self.port).client


class Balancer:
    """The pool at run time: its servers, their load, and the open splices.

    :param pool: the pool's configuration.
    :param reactor: provides TCP and the clock for timeouts.
    :param scheduler: picks the server for each new connection.
    """

    def __init__(
        self, pool: Pool, reactor: ReactorTCPTime, scheduler: IScheduler
    ) -> None:
        self.pool = pool
        self.reactor = reactor
        self.scheduler = scheduler
        monitor = pool.monitor
        self.backends = [
            Backend(s, HealthState(monitor.rise, monitor.fall)) for s in pool.servers
        ]
        self.splices: set[Splice] = set()
        self.idle = IdleTimeout(pool.idle_timeout)
        self._emptied: list[Deferred[None]] = []

    def listener(self, port: Port) -> ServerFactory:
        """The factory accepting client connections on ``port``."""
        return _Listener(self, port)

    def endpoint(self, server: Server, port: int) -> IStreamClientEndpoint:
        """The endpoint connecting to ``server`` on ``port``."""
        return server_endpoint(
            self.reactor, server.address, port, self.pool.connect_timeout
        )

    def record(self, backend: Backend, ok: bool, reason: str = "ok") -> None:
        """Count a health check's result, or a failed connection, for ``backend``.

        A change of state is logged once, with its reason.
        """
        if not backend.health.record(ok, reason):
            return
        if ok:
            log.info(
                "server {server} ({address}) is up: {rise} checks in a row passed",
                server=backend.name,
                address=backend.server.address,
                rise=backend.health.rise,
            )
        else:
            log.warn(
                "server {server} ({address}) is down: {reason}",
                server=backend.name,
                address=backend.server.address,
                reason=reason,
            )

    def sweep(self) -> None:
        """Close the connections that have been idle too long."""
        for splice in self.idle.expired(self.splices, self.reactor.seconds()):
            splice.expire()

    def forget(self, splice: Splice) -> None:
        """Drop a splice whose client connection is gone."""
        self.splices.discard(splice)
        if not self.splices:
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """A Deferred that fires once no client connection is open."""
        if not self.splices:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptied.append(d)
        return d
