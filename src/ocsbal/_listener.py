"""Accepting on a VIP port: a splice for each client, unless it is over its limits.

A :class:`Listener` is the factory of one VIP port.  A client over the
pool's ``[limits]`` (:mod:`ocsbal._limits`) is closed at once, unread, with
a rate-limited line and a count; every other one starts a
:class:`~ocsbal._relay.Splice`.  While a process connects as many clients
as it takes at once (:mod:`ocsbal._admission`), its ports stop accepting
(:func:`pause_accepting`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import ServerFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from ocsbal._connlog import closed
from ocsbal._endpoints import host_port, url_host
from ocsbal._limits import source_of
from ocsbal._relay import Relay, Splice

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IListeningPort

    from ocsbal._model import Port
    from ocsbal._sides import Side

__all__ = ["Listener", "pause_accepting"]


class Listener(ServerFactory):
    """Accepts client connections on one VIP port.

    :ivar port: the VIP port and what it carries; a reload may replace it.
    """

    # The port already logs that it listens; the factory would say it again.
    noisy = False

    def __init__(self, relay: Relay, port: Port) -> None:
        self.relay = relay
        self.port = port

    def factory(self) -> ServerFactory[Any]:
        """What accepts on its port: it, behind TLS if the relay terminates it."""
        relay = self.relay
        if relay.tls is None or not relay.terminates(self.port):
            return self
        tls = TLSMemoryBIOFactory(relay.tls.accepting, False, self, relay.reactor)
        # Typed a client factory, it serves as well; listenTCP's stub wants one.
        return cast(ServerFactory[Any], tls)

    def buildProtocol(self, addr: IAddress | None) -> Side | None:
        """The new client's side of its splice; ``None`` if over its limits."""
        relay = self.relay
        limits = relay.pool.limits
        if not limits.any:
            return Splice(relay, self.port).client
        peer = cast(IPv4Address | IPv6Address, addr)
        source = source_of(peer.host)
        table = relay.sources
        table.limits = limits
        broken = table.admit(source)
        if broken is not None:
            self._refuse(peer, broken, getattr(limits, broken))
            return None  # the port closes it at once, unread
        splice = Splice(relay, self.port)
        splice.source = source
        return splice.client

    def _refuse(self, peer: IPv4Address | IPv6Address, limit: str, most: int) -> None:
        relay, port = self.relay, self.port.number
        relay.limited[limit] += 1
        relay.log.info(
            "refused connection from {client} to port {port}: over {limit} ({most})",
            kind=(port, limit),
            client=url_host(peer.host),
            port=port,
            limit=limit,
            most=most,
        )
        if relay.pool.log.connections:
            closed(
                client=host_port(peer),
                vip_port=port,
                server=None,
                connect=None,
                duration_s=0.0,
                up=0,
                down=0,
                cause="limit",
            )


def pause_accepting(ports: Iterable[IListeningPort], paused: bool) -> None:
    """Stop accepting on TCP ports, or accept again; they stay bound.

    Clients meanwhile wait in each port's accept queue, connected.  A port
    closed or closing stays so; ports of other kinds (a test's) accept on.
    """
    for port in ports:
        if not isinstance(port, tcp.Port) or port.disconnecting:
            continue
        if paused:
            port.stopReading()
        elif port.connected:
            port.startReading()
