"""The two sides of a relayed connection: the client's and the server's.

Each side is the protocol of one TCP (or TLS) connection and writes what it
reads to the other side's transport, unchanged.  Half-close passes through
(:class:`IHalfCloseableProtocol`): an EOF from one peer shuts down writing
towards the other, which may still answer.  Each transport is the streaming
producer of the other (through a :class:`_Feeder`), so a slow reader pauses
the fast writer and memory per connection stays bounded by the transports'
own buffers, whatever the peers do.

A side belongs to a splice (:mod:`ocsbal._relay`), which it tells when its
connection starts and ends, and which follows the SIP it reads.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from typing import Protocol as Shape
from typing import cast

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ocsbal.sip import SIPInspector

__all__ = ["ClientSide", "ServerSide", "Side", "unsent_bytes"]


class SplicedTransport(ITCPTransport, IPushProducer, IConsumer):
    """A TCP transport, as both producer and consumer of the other side."""


class Owner(Shape):
    """What a side needs of the splice it belongs to."""

    last_activity: float
    #: What ended it first, once something has.
    cause: str | None

    @property
    def clock(self) -> IReactorTime:
        """What reads the time of each chunk."""

    def start(self) -> None:
        """The client has connected: find it a server."""

    def inspect(self, side: Side, data: bytes, now: float) -> None:
        """Follow the SIP in ``data``, just relayed from ``side``."""

    def client_lost(self) -> None:
        """The client's connection is gone."""

    def server_lost(self) -> None:
        """The server's connection is gone."""


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class Side(Protocol):
    """One side of a splice: what it reads is written to its peer's transport.

    :ivar from_server: whether this is the server's side.
    :ivar handshake: over TLS, fires when the handshake completes, or fails
        with the reason the connection was lost before; ``None`` otherwise.
    :ivar inspector: follows the SIP this side reads, on ``sip`` ports and
        terminated ``sips`` ports, until it gives up.
    :ivar received: bytes read on this side's connection.
    :ivar lost: whether its connection is gone.
    """

    from_server = False
    transport: SplicedTransport

    #: The other side; set when the splice is attached, before reading starts.
    peer: Side

    # Two per connection: what it adds goes in slots, and so do the two
    # attributes of Protocol's that Twisted sets, which would otherwise
    # make a dict for each side (88 to 272 bytes).  Protocol has no slots,
    # so anything else set on a side still goes in one.
    __slots__ = (
        "_read_closed",
        "_through",
        "_write_closed",
        "connected",
        "handshake",
        "inspector",
        "lost",
        "peer",
        "received",
        "splice",
        "transport",
    )

    def __init__(self, splice: Owner, tls: bool = False) -> None:
        # Protocol's defaults, which its class attributes gave before the
        # slots hid them: not connected, no transport.
        self.connected = 0
        self.transport = cast(SplicedTransport, None)
        self.splice = splice
        self._read_closed = False
        self._write_closed = False
        self.lost = False
        self.received = 0
        self.inspector: SIPInspector | None = None
        self.handshake: Deferred[None] | None = Deferred() if tls else None
        #: The peer's TCP connection, written to through :func:`_write_through`;
        #: ``None`` where the peer's transport is another kind, written to as it is.
        self._through: tcp.Connection | None = None

    def send_to(self, peer: Side) -> None:
        """Relay what this side reads to ``peer`` from now on."""
        self.peer = peer
        transport = peer.transport
        # The connection itself, not a bound method made for it: that and
        # its object would last as long as the connection, on both sides.
        # TLS, a held client's stand-in, or a test's transport: as it is.
        self._through = transport if isinstance(transport, tcp.Connection) else None

    def feed_from(self, peer: Side) -> None:
        """Take writes from ``peer``, as a streaming producer (flow control)."""
        self.transport.registerProducer(_Feeder(peer), True)

    def dataReceived(self, data: bytes) -> None:
        # One clock read per chunk is all idle accounting costs (see _idle).
        now = self.splice.last_activity = self.splice.clock.seconds()
        self.received += len(data)
        through = self._through
        if through is None:
            self.peer.transport.write(data)
        else:
            _write_through(through, data)
        # Observed after it is on its way: inspection never delays or alters.
        if self.inspector is not None:
            self.splice.inspect(self, data, now)

    def readConnectionLost(self) -> None:
        # The first end of a stream, even half of one, is what ends it.
        splice = self.splice
        if splice.cause is None:
            splice.cause = "server-closed" if self.from_server else "client-closed"
        self._read_closed = True
        if not self.peer.lost:
            self.peer.transport.loseWriteConnection()
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        # Twisted leaves a half-closed socket open until the protocol says so.
        if self._read_closed and self._write_closed:
            self.transport.loseConnection()

    def finish(self) -> None:
        """Close this side, whose peer is gone, after what waits for it.

        Over TCP it ends writing once Twisted's buffer is flushed (the FIN
        follows the data) and reads on, discarding, until its peer closes
        too: closing a socket with unread bytes would reset it, and a reset
        throws away whatever the kernel still holds for the peer.  TLS,
        which cannot half-close, closes after its buffer and close_notify.
        """
        if self.lost:
            return
        transport = self.transport
        # What fed it is gone; and TLS does not close while a producer is
        # registered, so this comes first.
        transport.unregisterProducer()
        if not isinstance(transport, tcp.Connection):
            transport.loseConnection()
            return
        if self._read_closed:  # nothing more can come: close once flushed
            transport.loseConnection()
            return
        if not self._write_closed:
            transport.loseWriteConnection()
        transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        if self.handshake is not None and not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.lost = True
        if self.handshake is not None and not self.handshake.called:
            self.handshake.errback(reason)


class ClientSide(Side):
    """The client's side: accepted on a VIP port, it starts the splice."""

    __slots__ = ()

    def connectionMade(self) -> None:
        self.splice.start()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.splice.client_lost()


class ServerSide(Side):
    """The server's side: the connection the splice opens to a server.

    :ivar reached: fires once the connection to the server is made, or
        fails with why it could not be; set by whoever connects it, and
        ``None`` once fired by the connection (a connection lasts for hours,
        and need not keep a Deferred and its canceller all along).
    """

    from_server = True
    __slots__ = ("reached",)
    reached: Deferred[None] | None

    def connectionMade(self) -> None:
        reached, self.reached = self.reached, None
        if reached is not None and not reached.called:
            reached.callback(None)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        super().connectionLost(reason)
        self.splice.server_lost()


def _write_through(transport: tcp.Connection, data: bytes) -> None:
    """Write to a TCP connection's socket at once while nothing waits to go.

    ``transport.write`` only buffers, and sends on the reactor's next turn:
    for a message answered by a message, that is a turn and two epoll
    changes per message.  Sending at once when the transport's buffer is
    empty saves them; whatever the socket does not take goes through
    ``transport.write``, whose buffer, flow control (pausing the producer)
    and error handling stay as they are.  Twisted keeps its buffer in
    ``dataBuffer`` and ``_tempDataLen``, which this reads.
    """
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


class Held:
    """The transport a terminated client writes to until its server is attached.

    TLS hands over the bytes that came with the end of the handshake even
    once the client is paused, so at most one read's worth waits here.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @classmethod
    def side(cls, splice: Owner) -> Side:
        """A stand-in server side holding what the client sends meanwhile."""
        waiting = Side(splice)
        waiting.transport = cast(SplicedTransport, cls())
        return waiting


@implementer(IPushProducer)
class _Feeder:
    """What one side's transport takes its writes from: the other side.

    Flow control pauses and resumes the other side's transport, as with the
    transport itself registered; but when this side's connection is lost,
    Twisted stops its producer, which would close the other side at once,
    unread bytes and all.  Here the other side :meth:`finishes
    <Side.finish>` instead.
    """

    __slots__ = ("side",)

    def __init__(self, side: Side) -> None:
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
