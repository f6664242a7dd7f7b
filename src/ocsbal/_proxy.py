"""The relay: each client connection accepted on the VIP is spliced to one server.

The splice follows :mod:`twisted.protocols.portforward` and tightens it:

- the client transport is paused from the moment it is accepted until a
  server is connected, so nothing is buffered in between;
- each transport is registered as the streaming producer of the other, so a
  slow reader pauses the fast writer and memory per connection stays bounded
  by the transports' own buffers, whatever the peers do;
- half-close passes through (:class:`IHalfCloseableProtocol`): an EOF from
  one peer shuts down writing towards the other, which may still answer;
- the relay never changes or reorders the bytes it carries; on ``sip``
  ports (and ``sips`` ports whose TLS it terminates) it follows the SIP
  after relaying each chunk, without delaying or altering it.

On ``sips`` ports with ``[tls] mode = terminate`` both sides are Twisted's
TLS (:mod:`twisted.protocols.tls`): the client's handshake must complete
within ``handshake_timeout`` before a server is picked, and a server counts
as connected only once its handshake completes and its certificate checks
out, so a server that fails verification is a failed connection attempt
and the next one is tried.
"""

from __future__ import annotations

import enum
import fcntl
import struct
import termios
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import attrs
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ocsbal._endpoints import ReactorTCPTime, failed_here, server_endpoint
from ocsbal._idle import IdleTimeout
from ocsbal._logs import LimitedLog
from ocsbal._model import NatMode, PortProtocol
from ocsbal._network import TransparentTCP
from ocsbal._tls import tls_contexts, tls_reason
from ocsbal.health import HealthState
from ocsbal.scheduling import IScheduler, NoServerAvailable, scheduler_class
from ocsbal.sip import GaveUp, Registrations, SIPInspector, SIPTally

if TYPE_CHECKING:
    from ocsbal._model import Pool, Port, Server

log = Logger(namespace="ocsbal")


class _SplicedTransport(ITCPTransport, IPushProducer, IConsumer):
    """A TCP transport, as both producer and consumer of the other side."""


class AdminState(enum.Enum):
    """What the operator allows of a server, whatever its health."""

    #: Takes new connections while it is up.
    READY = "ready"
    #: Takes no new connection; those open continue.  Still health-checked.
    DRAIN = "drain"
    #: Takes no new connection and is not health-checked; those open
    #: continue.  Back in ``ready``, it must pass ``rise`` checks again.
    MAINT = "maint"


@attrs.define(eq=False)
class Backend:
    """A server of the pool at run time: its configuration, state and load.

    It satisfies :class:`ocsbal.scheduling.Candidate`, so schedulers rank it
    directly.

    :ivar server: the configured server; replaced when it is re-weighted.
    :ivar health: whether it is up, from its health checks and from failed
        connections.
    :ivar state: what the operator allows.
    :ivar active: connections to this server that are open or being opened.
    :ivar splices: the connections relayed to it now.
    :ivar total: connections relayed to it since it joined.
    :ivar removed: whether it has been removed from the pool; it is gone
        once its last connection closes.
    """

    server: Server
    health: HealthState
    state: AdminState = AdminState.READY
    active: int = 0
    splices: set[Splice] = attrs.Factory(set)
    total: int = 0
    removed: bool = False
    #: Bytes of the connections already closed, from and to the server.
    _closed_received: int = 0
    _closed_sent: int = 0

    @property
    def name(self) -> str:
        """The server's name, from its ``[server:NAME]`` section."""
        return self.server.name

    @property
    def weight(self) -> int:
        """The server's configured weight."""
        return self.server.weight

    @property
    def accepting(self) -> bool:
        """Whether the operator lets new connections go to this server."""
        return self.state is AdminState.READY and not self.removed

    @property
    def pickable(self) -> bool:
        """Whether a new connection may go to this server now."""
        return self.health.up and self.accepting

    @property
    def monitored(self) -> bool:
        """Whether health checks should run on this server."""
        return self.state is not AdminState.MAINT and not self.removed

    @property
    def received(self) -> int:
        """Bytes read from this server, over all its connections."""
        return self._closed_received + sum(s.downstream for s in self.splices)

    @property
    def sent(self) -> int:
        """Bytes written to this server, over all its connections."""
        return self._closed_sent + sum(s.upstream for s in self.splices)

    def attached(self, splice: Splice) -> None:
        """Count a connection relayed to this server."""
        self.total += 1
        self.splices.add(splice)

    def detached(self, splice: Splice) -> None:
        """Count the end of a connection relayed to this server."""
        self.splices.discard(splice)
        self._closed_received += splice.downstream
        self._closed_sent += splice.upstream


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _Side(Protocol):
    """One side of a splice: the client connection or the server connection.

    Everything it reads is written to its peer's transport.

    :ivar handshake: over TLS, fires when the handshake completes, or fails
        with the reason the connection was lost before; ``None`` otherwise.
    """

    transport: _SplicedTransport

    #: The other side; set when the splice is attached, before reading starts.
    peer: _Side

    # Two per connection: what it adds goes in slots, not the dict that
    # Protocol's own attributes need.
    __slots__ = (
        "_readClosed",
        "_writeClosed",
        "handshake",
        "inspector",
        "lost",
        "peer",
        "received",
        "send",
        "splice",
    )

    def __init__(self, splice: Splice, tls: bool = False) -> None:
        self.splice = splice
        self._readClosed = False
        self._writeClosed = False
        self.lost = False
        #: Bytes read on this side's connection.
        self.received = 0
        #: Follows the SIP this side reads, on sip ports, until it gives up.
        self.inspector: SIPInspector | None = None
        self.handshake: Deferred[None] | None = Deferred() if tls else None
        #: Writes what this side reads to the peer; set when it is attached.
        self.send: Callable[[bytes], None]

    def sendTo(self, peer: _Side) -> None:
        """Relay what this side reads to ``peer`` from now on."""
        self.peer = peer
        transport = peer.transport
        if isinstance(transport, tcp.Connection):
            self.send = _WriteThrough(transport).write
        else:  # TLS, or a stand-in in tests
            self.send = transport.write

    def connectionMade(self) -> None:
        if self is self.splice.client:
            self.splice.start()

    def dataReceived(self, data: bytes) -> None:
        # One clock read per chunk is all idle accounting costs (see _idle).
        now = self.splice.last_activity = self.splice.clock.seconds()
        self.received += len(data)
        self.send(data)
        # Observed after it is on its way: inspection never delays or alters.
        if self.inspector is not None:
            self.splice.inspect(self, data, now)

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

    def finish(self) -> None:
        """Close this side, whose peer is gone, after what waits for it.

        Over TCP it ends writing once Twisted's buffer is flushed (the FIN
        follows the data) and reads on, discarding, until its peer closes
        too: closing a socket with unread bytes would reset it, and a reset
        throws away whatever the kernel still holds for the peer.  TLS,
        which cannot half-close, closes after its buffer and close_notify.
        """
        transport = self.transport
        if self.lost or not isinstance(transport, tcp.Connection):
            if not self.lost:
                transport.loseConnection()
            return
        transport.unregisterProducer()  # what fed it is gone
        if self._readClosed:  # nothing more can come: close once flushed
            transport.loseConnection()
            return
        if not self._writeClosed:
            transport.loseWriteConnection()
        transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.lost = True
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(reason)
        self.splice.sideLost(self)


class _WriteThrough:
    """Writes to a TCP connection's socket at once while nothing waits to go.

    ``transport.write`` only buffers, and sends on the reactor's next turn:
    for a message answered by a message, that is a turn and two epoll
    changes per message.  Sending at once when the transport's buffer is
    empty saves them; whatever the socket does not take goes through
    ``transport.write``, whose buffer, flow control (pausing the producer)
    and error handling stay as they are.  Twisted keeps its buffer in
    ``dataBuffer`` and ``_tempDataLen``, which this reads.
    """

    __slots__ = ("_transport",)

    def __init__(self, transport: tcp.Connection) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        transport = self._transport
        if (
            transport.dataBuffer
            or transport._tempDataLen
            or transport.disconnecting
            or not transport.connected
        ):
            transport.write(data)
            return
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent < len(data):
            transport.write(data[sent:])
        elif not isinstance(sent, int):  # lost: let Twisted find out and close
            transport.write(data)


class _Held:
    """The transport a terminated client writes to until its server is attached.

    TLS hands over the bytes that came with the end of the handshake even
    once the client is paused, so at most one read's worth waits here.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


@implementer(IPushProducer)
class _Feeder:
    """What one side's transport takes its writes from: the other side.

    Flow control pauses and resumes the other side's transport, as with the
    transport itself registered; but when this side's connection is lost,
    Twisted stops its producer, which would close the other side at once,
    unread bytes and all.  Here the other side :meth:`finishes
    <_Side.finish>` instead.
    """

    __slots__ = ("side",)

    def __init__(self, side: _Side) -> None:
        self.side = side

    def pauseProducing(self) -> None:
        self.side.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.side.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.side.finish()


def unsent_bytes(transport: object) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet.

    Those in Twisted's buffer, and those in the kernel's send queue
    (``TIOCOUTQ``: sent but not acknowledged, or not sent yet).  Under TLS,
    those of the TCP connection beneath, to which TLS writes at once.
    Anything but a TCP connection (a test's transport) holds none.
    """
    while isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    if not isinstance(transport, tcp.Connection):
        return 0
    buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    try:
        queue = fcntl.ioctl(transport.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # closed meanwhile
        return buffered
    queued: int = struct.unpack("i", queue)[0]
    return buffered + queued


#: Bytes waiting for a peer must stay as they are this long, in seconds,
#: before their connection counts as idle: what a slow reader takes shows
#: only when the sweep looks, and one sweep may be a twentieth of a second.
PROGRESS_WINDOW = 1.0


class Splice:
    """One client connection and the server connection it is relayed to.

    :ivar started: clock time the client connected.
    :ivar last_activity: clock time of the last byte read on either side,
        or taken by either peer as far as the sweep has seen (see
        :meth:`idle`).
    :ivar closing: whether ocsbal is closing it: it was idle, or a side is
        gone and the other finishing.
    :ivar backend: the server chosen, once connected.
    :ivar sip: what the SIP on a ``sip`` port says of registrations and
        keep-alives; ``None`` on other ports.
    :ivar gave_up: why SIP inspection stopped on this connection, if it did.
    """

    # Tens of thousands live at once, mostly idle: no per-instance dict.
    __slots__ = (
        "_connecting",
        "_since",
        "_unsent",
        "backend",
        "balancer",
        "client",
        "clock",
        "closing",
        "gave_up",
        "last_activity",
        "port",
        "server",
        "sip",
        "started",
        "tls",
    )

    def __init__(self, balancer: Balancer, port: Port) -> None:
        self.balancer = balancer
        self.clock = balancer.reactor
        self.port = port
        #: Whether TLS is terminated here, on both sides.
        self.tls = balancer.terminates(port)
        self.client = _Side(self, self.tls)
        self.server: _Side | None = None
        self.backend: Backend | None = None
        self.started = self.last_activity = self.clock.seconds()
        self._connecting: Deferred[Any] | None = None
        self.closing = False
        #: What waited for the peers when the sweep last looked, and since
        #: when it has been that.
        self._unsent = 0
        self._since = self.started
        self.sip: Registrations | None = None
        self.gave_up: str | None = None
        if port.protocol is PortProtocol.SIP or self.tls:
            self.sip = Registrations()
            self.client.inspector = SIPInspector()

    def inspect(self, side: _Side, data: bytes, now: float) -> None:
        """Follow the SIP in ``data``, just relayed from ``side``."""
        observe = cast(Registrations, self.sip).from_client
        if side is not self.client:
            observe = cast(Registrations, self.sip).from_server
        for event in cast(SIPInspector, side.inspector).feed(data):
            if isinstance(event, GaveUp):
                # Plain TCP from now on, both ways.
                self.client.inspector = None
                if self.server is not None:
                    self.server.inspector = None
                self.gave_up = event.reason
                self.balancer.sip.count(event)
                return
            observe(event, now)
            self.balancer.sip.count(event)

    @property
    def peer(self) -> IAddress:
        """The client's address."""
        return self.client.transport.getPeer()

    @property
    def upstream(self) -> int:
        """Bytes relayed from the client to the server."""
        return self.client.received

    @property
    def downstream(self) -> int:
        """Bytes relayed from the server to the client."""
        return 0 if self.server is None else self.server.received

    def start(self) -> None:
        """Pause the new client connection and connect it to a server.

        Over TLS, the client's handshake comes first.
        """
        self.balancer.splices.add(self)
        self.balancer.accepted[self.port.number] += 1
        ensureDeferred(self._connect()).addErrback(
            lambda f: log.failure("unexpected error relaying {peer}", f, peer=self.peer)
        )

    async def _handshake(self, handshake: Deferred[None]) -> bool:
        """Wait for the client's TLS handshake; whether it completed."""
        timeout = self.balancer.pool.tls.handshake_timeout
        try:
            await handshake.addTimeout(timeout, self.clock)
        except (ConnectionDone, ConnectionLost):
            return False  # closed before a word, as TCP probes and scanners do
        except Exception as e:
            reason = (
                f"no TLS handshake within {timeout:g} s"
                if isinstance(e, TimeoutError)
                else tls_reason(e)
            )
            self.balancer.log.info(
                "TLS client {peer} on port {port} dropped: {reason}",
                kind=(self.port.number, reason),
                peer=self.peer,
                port=self.port.number,
                reason=reason,
            )
            if not self.client.lost:
                self.client.transport.abortConnection()
            return False
        waiting = _Side(self)
        waiting.transport = cast(_SplicedTransport, _Held())
        self.client.sendTo(waiting)
        return True

    async def _connect(self) -> None:
        if self.client.handshake is not None and not await self._handshake(
            self.client.handshake
        ):
            return
        self.client.transport.pauseProducing()
        balancer = self.balancer
        pool = balancer.pool
        tried: list[Backend] = []
        reason = ""
        for _ in range(pool.retries + 1):
            candidates = [
                b for b in balancer.backends.values() if b.pickable and b not in tried
            ]
            try:
                backend = cast(Backend, balancer.scheduler.pick(candidates))
            except NoServerAvailable as e:
                reason = str(e)
                break
            tried.append(backend)
            backend.active += 1
            side = _Side(self, self.tls)
            self._connecting = balancer.connect(
                backend.server, self.port, side, self.peer
            )
            try:
                await self._connecting
                if side.handshake is not None:
                    self._connecting = side.handshake
                    await side.handshake.addTimeout(pool.connect_timeout, self.clock)
            except Exception as e:
                if side.transport is not None and not side.lost:
                    side.transport.abortConnection()  # connected, no handshake
                balancer.release(backend)
                if self.client.lost:
                    return
                error = tls_reason(e)
                if failed_here(e):
                    # No other server would fare better, and none is to blame.
                    reason = f"this host cannot connect to servers: {error}"
                    break
                reason = f"server {backend.name} failed: {error}"
                balancer.record(backend, False, f"a connection failed: {error}")
                balancer.log.warn(
                    "connection from {peer} to server {server} "
                    "({address}:{port}) failed: {error}",
                    kind=(backend.name, self.port.number, error),
                    peer=self.peer,
                    server=backend.name,
                    address=backend.server.address,
                    port=self.port.number,
                    error=error,
                )
                continue
            finally:
                self._connecting = None
            if not backend.accepting:
                # Drained or removed while connecting: this connection is new.
                side.transport.loseConnection()
                balancer.release(backend)
                reason = f"server {backend.name} stopped taking new connections"
                continue
            self._attach(backend, side)
            return
        balancer.log.warn(
            "rejected connection from {peer} to port {port}: {reason}",
            kind=(self.port.number, reason),
            peer=self.peer,
            port=self.port.number,
            reason=reason,
        )
        balancer.rejected[self.port.number] += 1
        # Reading again lets TLS hear the client's close_notify, without
        # which it would keep the connection open; plain TCP minds not.
        self.client.transport.resumeProducing()
        self.client.transport.loseConnection()

    def _attach(self, backend: Backend, server: _Side) -> None:
        self.backend = backend
        self.server = server
        backend.attached(self)
        if self.client.lost:
            server.transport.loseConnection()
            return
        server.sendTo(self.client)
        held = getattr(self.client, "peer", None)
        self.client.sendTo(server)
        if held is not None:
            for chunk in cast(_Held, held.transport).chunks:
                server.transport.write(chunk)
        if self.client.inspector is not None:
            server.inspector = SIPInspector(from_server=True)
        self.client.transport.registerProducer(_Feeder(server), True)
        server.transport.registerProducer(_Feeder(self.client), True)
        self.client.transport.resumeProducing()

    def sideLost(self, side: _Side) -> None:
        """Pass a close through to the other side and settle the accounts.

        A server side lost before it was attached (its TLS handshake failed)
        is :meth:`_connect`'s to handle.
        """
        balancer = self.balancer
        if side is self.client:
            balancer.forget(self)
            if self._connecting is not None:
                self._connecting.cancel()
            other = self.server
        elif side is self.server:
            backend = cast(Backend, self.backend)
            backend.detached(self)
            balancer.release(backend)
            other = self.client
        else:
            return
        if other is None or other.lost:
            balancer.flushing.discard(self)
            balancer.draining.discard(self)
            return
        # A peer that takes nothing more would keep its side open for ever:
        # the sweep aborts it once it has taken nothing for the idle timeout.
        self.closing = True
        other.finish()
        if other is self.server:
            balancer.flushing.add(self)

    def close(self) -> None:
        """Close both sides, after flushing what is already buffered."""
        self.client.transport.loseConnection()
        if self.server is not None:
            self.server.transport.loseConnection()

    def abort(self) -> None:
        """Close both sides at once, discarding what is buffered."""
        for side in (self.client, self.server):
            if side is not None and not side.lost:
                side.transport.abortConnection()

    def expire(self) -> None:
        """Close this idle connection, after what is buffered for its peers.

        If a peer takes none of it, the sweep aborts it later (:meth:`stuck`).
        """
        self.closing = True
        self.balancer.log.info(
            "closing idle connection from {peer} on port {port}",
            kind=self.port.number,
            peer=self.peer,
            port=self.port.number,
        )
        self.close()

    def look(self, now: float) -> float | None:
        """How long what waits for the peers has stayed as it is.

        ``None`` if nothing waits.  Bytes a peer takes out of the buffers
        show only when the sweep looks: from the first look that finds
        bytes waiting, the balancer watches the connection at every sweep,
        and bytes taken since the last look are activity, stamped now.  The
        first look has nothing to compare with: the time counts from it.
        """
        balancer = self.balancer
        unsent = sum(
            balancer.unsent(side.transport)
            for side in (self.client, self.server)
            if side is not None and not side.lost
        )
        watched = self in balancer.draining
        if unsent != self._unsent or not watched:
            if watched:
                self.last_activity = now  # a peer took bytes since the last look
            self._unsent, self._since = unsent, now
        if not unsent:
            balancer.draining.discard(self)
            return None
        balancer.draining.add(self)
        return now - self._since

    def idle(self, now: float) -> bool:
        """Whether nothing has moved here for long enough to close it.

        The sweep asks once no byte has been read for the idle timeout;
        then nothing must wait for a peer, or what waits must have stayed
        as it is for :data:`PROGRESS_WINDOW`.
        """
        still = self.look(now)
        return still is None or still >= PROGRESS_WINDOW

    def stuck(self, now: float, timeout: float) -> bool:
        """Whether this closing connection's peers took nothing for ``timeout``.

        Then it is aborted: a reset is for a peer that takes nothing.
        """
        still = self.look(now)
        return still is None or still >= timeout


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


class Listener(ServerFactory):
    """Accepts client connections on one VIP port.

    :ivar port: the VIP port and what it carries; a reload may replace it.
    """

    # The port already logs that it listens; the factory would say it again.
    noisy = False

    def __init__(self, balancer: Balancer, port: Port) -> None:
        self.balancer = balancer
        self.port = port

    def buildProtocol(self, addr: IAddress | None) -> _Side:  # noqa: ARG002
        return Splice(self.balancer, self.port).client


class UnknownServerError(KeyError):
    """No server of that name is in the pool."""

    def __str__(self) -> str:
        return f"no server named {self.args[0]} in the pool"


class LastServerError(ValueError):
    """A pool's last server cannot be removed: a pool needs one."""


class Balancer:
    """The pool at run time: its servers, their load, and the open splices.

    A new configuration (a :class:`~ocsbal.config.Pool`, which has already
    checked itself) is applied with :meth:`reconfigure`, and servers are
    drained or put in maintenance with :meth:`set_state`, while connections
    run.

    :param pool: the pool's configuration.
    :param reactor: provides TCP and the clock for timeouts.
    :param scheduler: picks the server for each new connection.
    :param unsent: how many bytes written to a transport its peer has not
        taken yet (:func:`unsent_bytes`).

    :ivar pool: the configuration in force, servers and weights included.
    :ivar backends: the pool's servers by name, in configuration order.
    :ivar leaving: removed servers that still have connections open.
    :ivar accepted: client connections accepted, by VIP port.
    :ivar rejected: client connections closed because no server could
        take them, by VIP port.
    :ivar sip: what the SIP on all its connections said, counted.
    :ivar log: where the lines of single connections go, which clients can
        repeat at will: rate-limited (:class:`~ocsbal._logs.LimitedLog`).
    """

    def __init__(
        self,
        pool: Pool,
        reactor: ReactorTCPTime,
        scheduler: IScheduler,
        unsent: Callable[[object], int] = unsent_bytes,
    ) -> None:
        self.pool = pool
        self.reactor = reactor
        self.scheduler = scheduler
        self.unsent = unsent
        self.backends = {
            s.name: Backend(s, HealthState(pool.monitor.rise, pool.monitor.fall))
            for s in pool.servers
        }
        self.leaving: set[Backend] = set()
        self.splices: set[Splice] = set()
        #: Connections whose client is gone while their server side finishes.
        self.flushing: set[Splice] = set()
        #: Connections with bytes waiting for a peer, which the sweep watches.
        self.draining: set[Splice] = set()
        self._transparent = cast(ReactorTCPTime, TransparentTCP(reactor))
        #: The TLS of terminated ``sips`` ports; ``None`` where TLS passes through.
        self.tls = tls_contexts(pool)
        self.idle = IdleTimeout(pool.idle_timeout)
        self.accepted: Counter[int] = Counter()
        self.rejected: Counter[int] = Counter()
        self.sip = SIPTally()
        self.log = LimitedLog(log, reactor)
        self._emptied: list[Deferred[None]] = []

    def backend(self, name: str) -> Backend:
        """The server called ``name``.

        :raises UnknownServerError: if there is none.
        """
        try:
            return self.backends[name]
        except KeyError:
            raise UnknownServerError(name) from None

    def reconfigure(self, pool: Pool) -> tuple[list[Backend], list[Backend]]:
        """Make ``pool`` the configuration in force, keeping every connection.

        A server whose name is gone, or whose address changed, is removed:
        it takes no new connection and is gone once its last one closes.  A
        new server (or new address) joins down, and is picked once its
        health checks pass.  The others keep their state and health and take
        their new weight from the next connection on.

        :return: the servers added and the servers removed.
        """
        old, self.pool = self.pool, pool
        wanted = {s.name: s for s in pool.servers}
        removed = [
            b
            for name, b in self.backends.items()
            if name not in wanted or wanted[name].address != b.server.address
        ]
        for backend in removed:
            backend.removed = True
            self.leaving.add(backend)
            self._goneIfIdle(backend)
        added: list[Backend] = []
        backends: dict[str, Backend] = {}
        monitor = pool.monitor
        for server in pool.servers:
            kept = self.backends.get(server.name)
            if kept is None or kept.removed:
                health = HealthState(monitor.rise, monitor.fall, up=False)
                backends[server.name] = Backend(server, health)
                added.append(backends[server.name])
            else:
                kept.server = server
                kept.health.rise, kept.health.fall = monitor.rise, monitor.fall
                backends[server.name] = kept
        self.backends = backends
        if pool.scheduler != old.scheduler:
            self.scheduler = scheduler_class(pool.scheduler)()
        if pool.idle_timeout != old.idle_timeout:
            self.idle = IdleTimeout(pool.idle_timeout)
        return added, removed

    def set_state(self, name: str, state: AdminState) -> None:
        """Put server ``name`` in ``state``; see :class:`AdminState`."""
        backend = self.backend(name)
        if state is AdminState.MAINT:
            backend.health.suspend("in maintenance")
        backend.state = state

    def release(self, backend: Backend) -> None:
        """Count a connection to ``backend`` closed or never made."""
        backend.active -= 1
        self._goneIfIdle(backend)

    def _goneIfIdle(self, backend: Backend) -> None:
        if backend.removed and not backend.active:
            self.leaving.discard(backend)

    def listener(self, port: Port) -> Listener:
        """The factory accepting client connections on ``port``."""
        return Listener(self, port)

    def terminates(self, port: Port) -> bool:
        """Whether TLS on ``port`` is terminated here."""
        return self.tls is not None and port.protocol is PortProtocol.SIPS

    def serving(self, listener: Listener) -> ServerFactory[Any]:
        """What accepts on ``listener``'s port: it, behind TLS if terminated."""
        if self.tls is None or not self.terminates(listener.port):
            return listener
        tls = TLSMemoryBIOFactory(self.tls.accepting, False, listener, self.reactor)
        # Typed a client factory, it serves as well; listenTCP's stub wants one.
        return cast(ServerFactory[Any], tls)

    def connect(
        self, server: Server, port: Port, side: _Side, client: IAddress
    ) -> Deferred[Any]:
        """Connect ``side`` to ``server`` on ``port``, over TLS if terminated.

        With half-NAT the connection comes from ``client``'s own address;
        with full NAT, from the pool's ``source``, if it has one.
        """
        factory: Factory[Any] = _Connector(side)
        if self.tls is not None and self.terminates(port):
            creator = self.tls.connecting(server)
            # Not wrapClientTLS: TLS must take its clock from this reactor.
            factory = cast(
                Factory[Any], TLSMemoryBIOFactory(creator, True, factory, self.reactor)
            )
        reactor, source = self.reactor, self.pool.source
        if self.pool.nat is NatMode.HALF:
            reactor, source = (
                self._transparent,
                cast(IPv4Address | IPv6Address, client).host,
            )
        endpoint = server_endpoint(
            reactor, server.address, port.number, self.pool.connect_timeout, source
        )
        return endpoint.connect(factory)

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

    def active_by_port(self) -> Counter[int]:
        """Client connections open, by VIP port."""
        return Counter(splice.port.number for splice in self.splices)

    def sweep(self) -> None:
        """Close the connections that have been idle too long.

        A connection is idle once nothing has moved for the idle timeout: no
        byte read, and none taken by a peer (see :meth:`Splice.idle`).  One
        carrying a live SIP registration is kept until its expiry plus the
        grace, however long that is; one whose registration missed its
        refresh by the grace is reported, once for each lapse, and closed if
        the pool says to reap it.

        A connection being closed whose peers have taken nothing for the
        idle timeout is aborted (:meth:`Splice.stuck`).
        """
        now = self.reactor.seconds()
        timeout, grace = self.idle.timeout, self.pool.registration_grace
        for splice in list(self.draining):
            splice.look(now)
        stuck = [
            s for s in self.idle.expired(self.flushing, now) if s.stuck(now, timeout)
        ]
        expiring: set[Splice] = set()
        for splice in self.idle.expired(self.splices, now):
            if splice.closing:
                if splice.stuck(now, timeout):
                    stuck.append(splice)
            elif (
                splice.sip is None or self.closing_time(splice)[0] <= now
            ) and splice.idle(now):
                expiring.add(splice)
        for splice in self.splices:
            if splice.sip is None:
                continue
            if splice.sip.lapsed(now, grace):
                self.log.warn(
                    "connection from {peer} missed its registration refresh "
                    "({aors}) by more than {grace:g} s",
                    peer=splice.peer,
                    aors=", ".join(splice.sip.bindings),
                    grace=grace,
                )
            if (
                self.pool.reap_expired
                and not splice.closing
                and splice.sip.missed_refresh(now, grace)
            ):
                expiring.add(splice)
        for splice in stuck:
            splice.abort()
        for splice in expiring:
            splice.expire()

    def closing_time(self, splice: Splice) -> tuple[float, str]:
        """When the sweep closes ``splice`` if it stays as it is, and why then.

        See :meth:`IdleTimeout.closing`.
        """
        return self.idle.closing(
            splice.last_activity,
            None if splice.sip is None else splice.sip.expiry,
            self.pool.registration_grace,
            self.pool.reap_expired,
        )

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
