"""Connections to the pool's servers: the relay's, and the monitors' endpoints."""

from __future__ import annotations

import errno

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectBindError, ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure


class ReactorTCPTime(IReactorTCP, IReactorTime):
    """The reactor features the relay and the monitors need: TCP and a clock."""


def is_ipv6(address: str) -> bool:
    """Whether ``address``, an IP address the configuration checked, is IPv6."""
    return ":" in address  # no IPv4 address holds a colon


def url_host(address: str) -> str:
    """``address`` as the host part of a URI: IPv6 in brackets."""
    return f"[{address}]" if is_ipv6(address) else address


def host_port(address: object) -> str:
    """A TCP address as ``HOST:PORT`` (IPv6 in brackets), as logs and reports say it."""
    if isinstance(address, IPv4Address | IPv6Address):
        return f"{url_host(address.host)}:{address.port}"
    return str(address)


def server_endpoint(
    reactor: IReactorTCP,
    address: str,
    port: int,
    timeout: float,
    source: str | None = None,
) -> IStreamClientEndpoint:
    """The TCP endpoint to ``address:port``, IPv4 or IPv6 as the address is.

    :param source: the address to connect from; ``None`` lets the routing
        table choose.
    """
    endpoint_type = TCP6ClientEndpoint if is_ipv6(address) else TCP4ClientEndpoint
    bind = None if source is None else (source, 0)
    return endpoint_type(reactor, address, port, timeout=timeout, bindAddress=bind)


class OneConnection(ClientFactory):
    """Connects one given protocol; ``reached`` fails if it cannot be.

    The relay connects with the reactor's ``connectTCP`` and this factory,
    rather than an endpoint: an endpoint puts a protocol of its own between
    the transport and the relay's, one more call for every chunk a server
    sends, and builds four more objects for every connection.  The
    protocol fires ``reached`` itself, once connected.  Quiet, as a noisy
    factory logs its start and stop: two lines for every connection.
    """

    noisy = False

    def __init__(self, protocol: Protocol, reached: Deferred[None]) -> None:
        self._protocol = protocol
        #: ``None`` once the protocol is built, when the connection is made
        #: and can no longer fail to be: the connector keeps its factory for
        #: as long as the connection lasts, which need not keep this too.
        self.reached: Deferred[None] | None = reached

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # noqa: ARG002
        """The one protocol."""
        self.reached = None
        return self._protocol

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:  # noqa: ARG002
        """Fail ``reached`` with why, unless it was cancelled."""
        if self.reached is not None and not self.reached.called:
            self.reached.errback(reason)


def out_of_ports(error: BaseException | None) -> bool:
    """Whether a connection failed for want of a free port on its source address.

    The kernel picks the source port at ``connect`` (see
    :class:`ocsbal._network.SourcedTCP`), and says ``EADDRNOTAVAIL`` when
    every port of the range is in use to that server's port.
    """
    return isinstance(error, ConnectError) and error.osError == errno.EADDRNOTAVAIL


def failed_here(error: BaseException | None) -> bool:
    """Whether a connection attempt failed on this host, before any server.

    Twisted reports a socket this host could not make or bind (out of file
    descriptors, a source address it does not hold) as
    :class:`ConnectBindError`; a source out of ports fails the connect.
    Both are the balancer's trouble, never the server's.
    """
    return isinstance(error, ConnectBindError) or out_of_ports(error)
