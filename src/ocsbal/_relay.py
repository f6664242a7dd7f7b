"""The relay: each client connection accepted on the VIP is spliced to one server.

The splice follows :mod:`twisted.protocols.portforward` and tightens it:

- the client transport is paused from the moment it is accepted until a
  server is connected, so nothing is buffered in between;
- its two sides (:mod:`ocsbal._sides`) write what each reads to the other,
  under flow control, and pass half-closes through;
- the relay never changes or reorders the bytes it carries; on ``sip``
  ports (and ``sips`` ports whose TLS it terminates) it follows the SIP
  after relaying each chunk, without delaying or altering it.

A splice goes through one life, :class:`Phase` by phase: accepted,
connecting, relaying, closing, closed, never back.

On ``sips`` ports with ``[tls] mode = terminate`` both sides are Twisted's
TLS (:mod:`twisted.protocols.tls`): the client's handshake must complete
within ``handshake_timeout`` before a server is picked, and a server counts
as connected only once its handshake completes and its certificate checks
out, so a server that fails verification is a failed connection attempt
and the next one is tried.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, TimeoutError, ensureDeferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger

from ocsbal._admission import Admission
from ocsbal._connlog import closed
from ocsbal._endpoints import ReactorTCPTime, failed_here, host_port
from ocsbal._limits import SourceLimits
from ocsbal._logs import LimitedLog
from ocsbal._model import PortProtocol
from ocsbal._outbound import Outbound
from ocsbal._pool import AtLimitError
from ocsbal._sides import ClientSide, Held, ServerSide, Side, unsent_bytes
from ocsbal._tls import failure_kind, tls_contexts, tls_reason
from ocsbal.scheduling import NoServerAvailable
from ocsbal.sip import Registrations, SIPInspector, SIPTally, follow

if TYPE_CHECKING:
    from ocsbal._model import Pool, Port
    from ocsbal._pool import Backend, RunningPool

__all__ = ["Phase", "Relay", "Splice"]

log = Logger(namespace="ocsbal")


class Phase(enum.Enum):
    """Where a splice is in its life."""

    #: The client is connected; over TLS, its handshake is under way.
    ACCEPTED = "accepted"
    #: A server is being picked and connected; the client is paused.
    CONNECTING = "connecting"
    #: Both sides are open and bytes flow.
    RELAYING = "relaying"
    #: Ocsbal closes it (idle, refused) or a side is gone and the other
    #: finishes; one whose peers take nothing is aborted by the sweep.
    CLOSING = "closing"
    #: Both connections are gone.
    CLOSED = "closed"


#: Where each phase may go: a splice never goes back.
_NEXT = {
    Phase.ACCEPTED: {Phase.CONNECTING, Phase.CLOSING, Phase.CLOSED},
    Phase.CONNECTING: {Phase.RELAYING, Phase.CLOSING, Phase.CLOSED},
    Phase.RELAYING: {Phase.CLOSING},
    Phase.CLOSING: {Phase.CLOSED},
    Phase.CLOSED: set(),
}


class Splice:
    """One client connection and the server connection it is relayed to.

    :ivar phase: where it is in its life.
    :ivar started: clock time the client connected.
    :ivar last_activity: clock time of the last byte read on either side,
        or taken by either peer as far as the sweep has seen (see
        :func:`ocsbal._sweep.look`).
    :ivar unsent_seen: what waited for the peers when the sweep last looked.
    :ivar still_since: since when that has waited as it is.
    :ivar backend: the server chosen, once connected.
    :ivar sip: what the SIP on a ``sip`` port says of registrations and
        keep-alives; ``None`` on other ports.
    """

    # Tens of thousands live at once, mostly idle: no per-instance dict.
    __slots__ = (
        "_connecting",
        "backend",
        "cause",
        "client",
        "clock",
        "connected",
        "last_activity",
        "phase",
        "port",
        "relay",
        "server",
        "sip",
        "source",
        "started",
        "still_since",
        "tls",
        "unsent_seen",
    )

    def __init__(self, relay: Relay, port: Port) -> None:
        self.relay = relay
        self.clock = relay.reactor
        self.port = port
        self.phase = Phase.ACCEPTED
        #: Whether TLS is terminated here, on both sides.
        self.tls = relay.terminates(port)
        self.client: Side = ClientSide(self, self.tls)
        self.server: Side | None = None
        self.backend: Backend | None = None
        self.started = self.last_activity = self.clock.seconds()
        #: When its server was connected, if it was.
        self.connected: float | None = None
        #: What ended it, first (see :data:`ocsbal._connlog.CAUSES`).
        self.cause: str | None = None
        self._connecting: Deferred[Any] | None = None
        self.unsent_seen = 0
        self.still_since = self.started
        self.sip: Registrations | None = None
        #: Where the client counts against ``[limits]``, if it does.
        self.source: str | None = None
        if port.protocol is PortProtocol.SIP or (self.tls and relay.pool.tls.inspect):
            self.sip = Registrations()
            self.client.inspector = SIPInspector()

    def _move(self, phase: Phase) -> None:
        if phase not in _NEXT[self.phase]:
            raise RuntimeError(f"a splice cannot go from {self.phase} to {phase}")
        if phase is Phase.CONNECTING:
            self.relay.admission.began()
        elif self.phase is Phase.CONNECTING:
            self.relay.admission.ended()
        self.phase = phase

    @property
    def closing(self) -> bool:
        """Whether ocsbal is closing it, or a side is gone and the other finishing."""
        return self.phase is Phase.CLOSING

    @property
    def peer(self) -> IAddress:
        """The client's address."""
        return self.client.transport.getPeer()

    @property
    def client_name(self) -> str:
        """The client's address and port, as log lines give them."""
        return host_port(self.peer)

    @property
    def upstream(self) -> int:
        """Bytes relayed from the client to the server."""
        return self.client.received

    @property
    def downstream(self) -> int:
        """Bytes relayed from the server to the client."""
        return 0 if self.server is None else self.server.received

    def inspect(self, side: Side, data: bytes, now: float) -> None:
        """Follow the SIP in ``data``, just relayed from ``side``."""
        sip = cast(Registrations, self.sip)
        inspector = cast(SIPInspector, side.inspector)
        reason = follow(inspector, sip, self.relay.sip, data, now)
        if reason is not None:  # plain TCP from now on, both ways
            sip.gave_up = reason
            self.client.inspector = None
            if self.server is not None:
                self.server.inspector = None

    def start(self) -> None:
        """Pause the new client connection and connect it to a server.

        Over TLS, the client's handshake comes first.
        """
        self.relay.splices.add(self)
        self.relay.accepted[self.port.number] += 1
        ensureDeferred(self._connect()).addErrback(
            lambda f: log.failure(
                "unexpected error relaying {peer}", f, peer=self.client_name
            )
        )

    async def _handshake(self, handshake: Deferred[None]) -> bool:
        """Wait for the client's TLS handshake; whether it completed."""
        timeout = self.relay.pool.tls.handshake_timeout
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
            self.relay.log.info(
                "TLS client {peer} on port {port} dropped: {reason}",
                kind=(self.port.number, reason),
                peer=self.client_name,
                port=self.port.number,
                reason=reason,
            )
            if not self.client.lost:
                self.client.transport.abortConnection()
            return False
        self.client.send_to(Held.side(self))
        return True

    async def _connect(self) -> None:
        if self.client.handshake is not None and not await self._handshake(
            self.client.handshake
        ):
            return
        if self.phase in (Phase.CLOSING, Phase.CLOSED):  # closed as it handshook
            return
        self._move(Phase.CONNECTING)
        self.client.transport.pauseProducing()
        servers = self.relay.servers
        tried: list[Backend] = []
        reason = ""
        for _ in range(servers.pool.retries + 1):
            try:
                backend = servers.pick(tried)
            except NoServerAvailable as e:
                at_limit = isinstance(e, AtLimitError)
                if tried and not at_limit:
                    break  # retries left, but every server it could try failed
                self._reject(str(e), "limit" if at_limit else "no-server")
                return
            tried.append(backend)
            try:
                side = await self._try(backend)
            except _UnreachedError as e:
                reason = str(e)
                if e.final:
                    self._reject(reason, "no-server")
                    return
                continue
            if side is not None:
                self._attach(backend, side)
            return
        self._reject(reason, "server-down")

    async def _try(self, backend: Backend) -> Side | None:
        """Connect to ``backend``; the side connected to it.

        ``None`` if the splice was closed meanwhile.

        :raises _UnreachedError: if this server cannot take the connection.
        """
        relay, servers = self.relay, self.relay.servers
        side = ServerSide(self, self.tls)
        self._connecting = relay.outbound.connect(
            backend.server, self.port, side, self.peer
        )
        try:
            await self._connecting
            if side.handshake is not None:
                self._connecting = side.handshake
                timeout = servers.pool.connect_timeout
                await side.handshake.addTimeout(timeout, self.clock)
        except Exception as e:
            if side.transport is not None and not side.lost:
                side.transport.abortConnection()  # connected, no handshake
            servers.release(backend)
            if self.client.lost:
                return None
            error = tls_reason(e)
            if failed_here(e):
                # No other server would fare better, and none is to blame.
                raise _UnreachedError(
                    f"this host cannot connect to servers: {error}", final=True
                ) from None
            servers.record(backend, False, f"a connection failed: {error}")
            backend.connect_failures[failure_kind(e)] += 1
            relay.log.warn(
                "connection from {peer} to server {server} "
                "({address}:{port}) failed: {error}",
                kind=(backend.name, self.port.number, error),
                peer=self.client_name,
                server=backend.name,
                address=backend.server.address,
                port=self.port.number,
                error=error,
            )
            raise _UnreachedError(f"server {backend.name} failed: {error}") from None
        finally:
            self._connecting = None
        if self.phase is not Phase.CONNECTING or not backend.accepting:
            side.transport.loseConnection()
            servers.release(backend)
            if self.phase is not Phase.CONNECTING:  # closed meanwhile, as idle
                return None
            # Drained or removed while connecting: this connection is new.
            raise _UnreachedError(
                f"server {backend.name} stopped taking new connections"
            )
        return side

    def _reject(self, reason: str, cause: str) -> None:
        """No server takes the client: close it, with one line saying why.

        :param cause: ``limit`` if a ``maxconn`` refused it, else whether no
            server could be picked (``no-server``) or those tried failed
            (``server-down``).
        """
        relay = self.relay
        self.cause = cause
        relay.log.warn(
            "rejected connection from {peer} to port {port}: {reason}",
            kind=(self.port.number, reason),
            peer=self.client_name,
            port=self.port.number,
            reason=reason,
        )
        if cause == "limit":
            relay.limited["maxconn"] += 1
        else:
            relay.rejected[self.port.number] += 1
        self._leave()
        # Reading again lets TLS hear the client's close_notify, without
        # which it would keep the connection open; plain TCP minds not.
        self.client.transport.resumeProducing()
        self.client.transport.loseConnection()

    def _attach(self, backend: Backend, server: Side) -> None:
        self.connected = self.clock.seconds()
        self.backend = backend
        self.server = server
        backend.attached(self)
        self._move(Phase.RELAYING)
        held = getattr(self.client, "peer", None)
        server.send_to(self.client)
        self.client.send_to(server)
        if held is not None:
            for chunk in cast(Held, held.transport).chunks:
                server.transport.write(chunk)
        if self.client.inspector is not None:
            server.inspector = SIPInspector(from_server=True)
        self.client.feed_from(server)
        server.feed_from(self.client)
        self.client.transport.resumeProducing()

    def client_lost(self) -> None:
        """The client's connection is gone: the server's side finishes."""
        if self.cause is None:
            self.cause = "client-closed"
        if self._connecting is not None:
            self._connecting.cancel()
        server = self.server
        if server is None or server.lost:
            self._closed()
        else:
            self._leave()
            self.relay.flushing.add(self)
            server.finish()
        # Last: what waits for no client to be left may run at once (a
        # stop), and find this splice as it now is.
        self.relay.forget(self)

    def server_lost(self) -> None:
        """The server's connection is gone: the client's side finishes.

        A server side lost before it was attached (its TLS handshake failed,
        or it came too late) is :meth:`_connect`'s to handle.
        """
        server = self.server
        if server is None or not server.lost:
            return
        if self.cause is None:
            self.cause = "server-closed"
        backend = cast("Backend", self.backend)
        backend.detached(self)
        self.relay.servers.release(backend)
        if self.client.lost:
            self._closed()
            return
        self._leave()
        self.client.finish()

    def _leave(self) -> None:
        # A peer that takes nothing more would keep its side open for ever:
        # the sweep aborts it once it has taken nothing for the idle timeout.
        if self.phase is not Phase.CLOSING:
            self._move(Phase.CLOSING)

    def _closed(self) -> None:
        self._move(Phase.CLOSED)
        relay = self.relay
        relay.flushing.discard(self)
        relay.draining.discard(self)
        if relay.pool.log.connections:
            connected = self.connected
            closed(
                client=self.client_name,
                vip_port=self.port.number,
                server=None if self.backend is None else self.backend.name,
                connect=None if connected is None else connected - self.started,
                duration_s=self.clock.seconds() - self.started,
                up=self.upstream,
                down=self.downstream,
                cause=self.cause or "client-closed",
                aors=() if self.sip is None else self.sip.bindings,
            )

    def close(self, cause: str = "admin") -> None:
        """Close both sides, after flushing what is already buffered.

        If a peer takes none of it, the sweep aborts it later
        (:func:`ocsbal._sweep.stuck`).

        :param cause: what ends it, for its log event.
        """
        if self.cause is None:
            self.cause = cause
        self._leave()
        self.client.transport.loseConnection()
        if self.server is not None:
            self.server.transport.loseConnection()

    def abort(self, cause: str = "idle-timeout") -> None:
        """Close both sides at once, discarding what is buffered.

        :param cause: what ends it, for its log event: by default, its
            peers took nothing for the idle timeout.
        """
        if self.cause is None:
            self.cause = cause
        for side in (self.client, self.server):
            if side is not None and not side.lost:
                side.transport.abortConnection()


class _UnreachedError(Exception):
    """A server did not take a connection; the message says why.

    :ivar final: whether no other server would fare better.
    """

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class Relay:
    """The connections of a pool: accepted, spliced, swept.

    :param servers: the pool at run time, which picks the servers.
    :param reactor: provides TCP and the clock for timeouts.
    :param unsent: how many bytes written to a transport its peer has not
        taken yet (:func:`~ocsbal._sides.unsent_bytes`).
    :param pause: told whether the VIP ports should stop accepting, or may
        accept again (:class:`~ocsbal._admission.Admission`).

    :ivar splices: the connections whose client is connected.
    :ivar flushing: the connections whose client is gone while their server
        side finishes.
    :ivar draining: the connections with bytes waiting for a peer, which the
        sweep watches.
    :ivar tls: the TLS of terminated ``sips`` ports; ``None`` where TLS
        passes through.
    :ivar accepted: client connections accepted, by VIP port.
    :ivar rejected: client connections closed because no server could
        take them, by VIP port.
    :ivar limited: client connections refused by a limit, by limit:
        ``maxconn`` (the pool's or every server's), ``per_source_connections``
        and ``per_source_rate``.
    :ivar sip: what the SIP on all its connections said, counted.
    :ivar admission: how many clients are being connected to servers.
    :ivar sources: what each client address holds, against ``[limits]``.
    :ivar log: where the lines of single connections go, which clients can
        repeat at will: rate-limited (:class:`~ocsbal._logs.LimitedLog`).
    """

    def __init__(
        self,
        servers: RunningPool,
        reactor: ReactorTCPTime,
        unsent: Callable[[object], int] = unsent_bytes,
        pause: Callable[[bool], None] = lambda _: None,
    ) -> None:
        self.servers = servers
        self.reactor = reactor
        self.unsent = unsent
        self.splices: set[Splice] = set()
        self.flushing: set[Splice] = set()
        self.draining: set[Splice] = set()
        self.tls = tls_contexts(servers.pool)
        self.accepted: Counter[int] = Counter()
        self.rejected: Counter[int] = Counter()
        self.limited: Counter[str] = Counter()
        self.sip = SIPTally()
        self.log = LimitedLog(log, reactor)
        self.outbound = Outbound(lambda: self.pool, reactor, self.tls, self.log)
        self.sources = SourceLimits(servers.pool.limits, reactor.seconds)
        self._emptied: list[Deferred[None]] = []
        self.admission = Admission(pause)

    @property
    def pool(self) -> Pool:
        """The configuration in force."""
        return self.servers.pool

    def terminates(self, port: Port) -> bool:
        """Whether TLS on ``port`` is terminated here."""
        return self.tls is not None and port.protocol is PortProtocol.SIPS

    def active_by_port(self) -> Counter[int]:
        """Client connections open, by VIP port."""
        return Counter(splice.port.number for splice in self.splices)

    def forget(self, splice: Splice) -> None:
        """Drop a splice whose client connection is gone."""
        self.splices.discard(splice)
        if splice.source is not None:
            self.sources.release(splice.source)
        if not self.splices:
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def when_empty(self) -> Deferred[None]:
        """A Deferred that fires once no client connection is open."""
        if not self.splices:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptied.append(d)
        return d
