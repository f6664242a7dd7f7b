"""The relay's server connections: where each comes from, and over what.

With half-NAT a server connection comes from its client's own address.
With full NAT it comes from the pool's ``source`` addresses, taken in turn
(:class:`Sources`), or from where the routing table says if there are none.
One source address carries some 28,000 connections to one server port (the
ephemeral port range); an address out of ports to a server is skipped for
a while, and the next one tried, so its exhaustion is never blamed on the
server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectingCancelledError,
)
from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from ocsbal._endpoints import OneConnection, ReactorTCPTime, out_of_ports
from ocsbal._model import NatMode, PortProtocol
from ocsbal._network import SourcedTCP

if TYPE_CHECKING:
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.interfaces import IAddress

    from ocsbal._logs import LimitedLog
    from ocsbal._model import Pool, Port, Server
    from ocsbal._sides import ServerSide
    from ocsbal._tls import TLSContexts

__all__ = ["REST", "Outbound", "Sources"]

#: Seconds a source address out of ports to a server's port is left alone.
REST = 5.0
#: Entries of resting sources kept before the expired ones are dropped.
_SWEEP_AT = 1024


class Sources:
    """The pool's source addresses, taken in turn, those out of ports skipped.

    :param now: the clock.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._turn = 0
        #: Until when each (source, server address, port) rests.
        self._resting: dict[tuple[str, str, int], float] = {}

    def order(self, sources: Sequence[str], host: str, port: int) -> list[str]:
        """The addresses one connection to ``host:port`` tries, in order.

        The first is the next in turn; those resting are left out.
        """
        turn = self._turn % len(sources)
        self._turn = turn + 1
        order = [*sources[turn:], *sources[:turn]]
        resting = self._resting
        if not resting:
            return order
        now = self._now()
        return [s for s in order if resting.get((s, host, port), 0.0) <= now]

    def out_of_ports(self, source: str, host: str, port: int) -> None:
        """Rest ``source`` for connections to ``host:port``: it has no port left."""
        now = self._now()
        if len(self._resting) >= _SWEEP_AT:
            self._resting = {k: t for k, t in self._resting.items() if t > now}
        self._resting[(source, host, port)] = now + REST


class Outbound:
    """Makes a relay's server connections.

    :param pool: the configuration in force, read at each connection.
    :param reactor: provides TCP and the clock.
    :param tls: the TLS of terminated ``sips`` ports, if any.
    :param log: where a source out of ports is said, rate-limited.
    """

    def __init__(
        self,
        pool: Callable[[], Pool],
        reactor: ReactorTCPTime,
        tls: TLSContexts | None,
        log: LimitedLog,
    ) -> None:
        self._pool = pool
        self._reactor = reactor
        self._transparent = cast(ReactorTCPTime, SourcedTCP(reactor, transparent=True))
        self._sourced = cast(ReactorTCPTime, SourcedTCP(reactor))
        self.tls = tls
        self.log = log
        self.sources = Sources(reactor.seconds)

    def connect(
        self, server: Server, port: Port, side: ServerSide, client: IAddress
    ) -> Deferred[None]:
        """Connect ``side`` to ``server`` on ``port``, over TLS if terminated.

        With half-NAT the connection comes from ``client``'s own address;
        with full NAT, from one of the pool's ``source`` addresses, if it
        has any.  Cancelled, it fails with :class:`ConnectingCancelledError`,
        as an endpoint's.
        """
        pool = self._pool()
        if pool.nat is NatMode.HALF:
            host = cast("IPv4Address | IPv6Address", client).host
            return self._once(self._transparent, server, port, side, host)
        if not pool.source:
            return self._once(self._reactor, server, port, side, None)
        if len(pool.source) == 1:
            return self._once(self._sourced, server, port, side, pool.source[0])
        return Deferred.fromCoroutine(self._spread(pool.source, server, port, side))

    async def _spread(
        self, sources: Sequence[str], server: Server, port: Port, side: ServerSide
    ) -> None:
        host, number = server.address, port.number
        for source in self.sources.order(sources, host, number):
            try:
                await self._once(self._sourced, server, port, side, source)
            except ConnectError as e:
                if not out_of_ports(e):
                    raise
                self.sources.out_of_ports(source, host, number)
                self.log.warn(
                    "source address {source} has no port left for connections "
                    "to {server}:{port}; the next is tried",
                    kind=(source, host, number),
                    source=source,
                    server=host,
                    port=number,
                )
                continue
            return
        raise ConnectBindError(
            string=f"every source address is out of ports to {host}:{number}"
        )

    def _once(
        self,
        reactor: ReactorTCPTime,
        server: Server,
        port: Port,
        side: ServerSide,
        source: str | None,
    ) -> Deferred[None]:
        def cancel(d: Deferred[None]) -> None:
            d.errback(ConnectingCancelledError(connector.getDestination()))
            connector.stopConnecting()

        reached = side.reached = Deferred(cancel)
        factory: ClientFactory = OneConnection(side, reached)
        tls = self.tls
        if tls is not None and port.protocol is PortProtocol.SIPS:
            # Not wrapClientTLS: TLS must take its clock from this reactor.
            factory = cast(
                ClientFactory,
                TLSMemoryBIOFactory(
                    tls.connecting(server), True, factory, self._reactor
                ),
            )
        bind = None if source is None else (source, 0)
        connector = reactor.connectTCP(
            server.address, port.number, factory, self._pool().connect_timeout, bind
        )
        return reached
