"""The sockets the VIP and half-NAT need, and the checks that they can be had.

- The listeners bind the VIP, which must be an address of this host, unless
  ``freebind`` lets a standby bind it before it holds it (``IP_FREEBIND``).
- With several workers, each VIP port is one ``SO_REUSEPORT`` socket per
  worker (:class:`SharedPort`), which the control process binds and hands
  over.
- With half-NAT each server connection binds the client's own address
  before connecting, which only a socket with ``IP_TRANSPARENT`` may do
  (Linux, ``CAP_NET_ADMIN``).  The servers' replies to that address reach
  this host through the policy routing the operator sets up (see
  ``docs/network.md``).

Twisted makes the sockets; these only set an option before they are bound.
"""

from __future__ import annotations

import errno
import socket
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from zope.interface import implementer

from ocsbal._endpoints import ReactorTCPTime, is_ipv6, url_host
from ocsbal._model import NatMode
from ocsbal._steering import steer_by_source, steer_evenly

if TYPE_CHECKING:
    from ocsbal._model import Pool

log = Logger(namespace="ocsbal")

# Linux's values; the socket module names them only in recent Pythons.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class NetworkSetupError(Exception):
    """The host cannot give the pool what its network settings ask for."""


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if is_ipv6(address) else socket.AF_INET


def _set(sock: socket.socket, ipv4: int, ipv6: int) -> None:
    """Set a socket option that IPv4 and IPv6 name differently."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, ipv6, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, ipv4, 1)


def _vip_socket(vip: str, freebind: bool, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket to bind on ``vip``.

    Its address is reusable (a restart does not wait out ``TIME_WAIT``);
    ``freebind`` sets ``IP_FREEBIND``, ``reuse_port`` ``SO_REUSEPORT``.
    """
    sock = socket.socket(_family(vip), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if freebind:
            _set(sock, IP_FREEBIND, IPV6_FREEBIND)
    except OSError:
        sock.close()
        raise
    return sock


def _listen_on(sock: socket.socket, vip: str, port: int, backlog: int) -> None:
    """Bind ``sock`` to ``vip:port`` and listen, without blocking."""
    sock.bind((vip, port))
    sock.listen(backlog)
    sock.setblocking(False)


def check_network(pool: Pool) -> None:
    """Make sure this host can give ``pool`` its VIP and NAT mode.

    :raises NetworkSetupError: naming what is missing.
    """
    check_vip(pool.vip, pool.freebind)
    if pool.nat is NatMode.HALF:
        check_transparent(pool.vip)


def check_vip(vip: str, freebind: bool) -> None:
    """Make sure the listeners can bind ``vip``.

    :raises NetworkSetupError: if it is not an address of this host and
        ``freebind`` is off, or if ``IP_FREEBIND`` cannot be set.
    """
    try:
        with _vip_socket(vip, freebind) as probe:
            probe.bind((vip, 0))
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            raise NetworkSetupError(
                f"[pool] vip = {vip} is not an address of this host: add it "
                "to an interface, or set freebind = yes on a standby that "
                "binds it before it holds it"
            ) from None
        raise NetworkSetupError(
            f"[pool] vip = {vip} cannot be bound: {e.strerror}"
        ) from None


def check_ports_free(pool: Pool) -> None:
    """Make sure the VIP's ports can be bound: none taken, none forbidden.

    ``twistd ocsbal`` checks before it forks, so a port another program
    holds stops it with one line, not a traceback after the fork.  With
    several workers the ports are bound with ``SO_REUSEPORT``, which would
    share a port with another ocsbal of the same user rather than fail:
    this probe, without it, finds that one too.

    :raises NetworkSetupError: naming every port that cannot be bound.
    """
    taken, forbidden = [], []
    for port in pool.ports:
        with _vip_socket(pool.vip, pool.freebind) as probe:
            try:
                probe.bind((pool.vip, port.number))
            except PermissionError:
                forbidden.append(port.number)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise NetworkSetupError(
                        f"[ports] {port.number} cannot be bound on {pool.vip}: "
                        f"{e.strerror}"
                    ) from None
                taken.append(port.number)
    problems = []
    if taken:
        where = ", ".join(f"{url_host(pool.vip)}:{n}" for n in taken)
        problems.append(
            f"[ports] {where} already in use (by another program, or another "
            "ocsbal): stop it, or choose other ports"
        )
    if forbidden:
        numbers = ", ".join(map(str, forbidden))
        problems.append(
            f"[ports] {numbers}: ports below 1024 need root to bind (twistd "
            "binds them before --uid gives root up)"
        )
    if problems:
        raise NetworkSetupError("; ".join(problems))


def check_transparent(address: str) -> None:
    """Make sure server connections can bind clients' addresses (half-NAT).

    :param address: an address of the family the clients come from.
    :raises NetworkSetupError: naming what is missing.
    """
    with socket.socket(_family(address), socket.SOCK_STREAM) as probe:
        try:
            _set(probe, IP_TRANSPARENT, IPV6_TRANSPARENT)
        except PermissionError:
            raise NetworkSetupError(
                "[pool] nat = half needs the CAP_NET_ADMIN capability to set "
                "IP_TRANSPARENT on server connections: run ocsbal as root, "
                "without twistd --uid, or grant it the capability"
            ) from None
        except OSError as e:
            raise NetworkSetupError(
                f"[pool] nat = half needs IP_TRANSPARENT (Linux), which this "
                f"host refuses: {e.strerror}"
            ) from None


def listen_freebind(
    reactor: IReactorSocket, port: int, factory: Any, interface: str, backlog: int
) -> IListeningPort:
    """Listen on ``interface:port`` whether or not this host holds ``interface``."""
    try:
        with _vip_socket(interface, freebind=True) as sock:
            _listen_on(sock, interface, port, backlog)
            # The reactor takes a duplicate; this one is closed on leaving.
            return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    except OSError as e:
        raise CannotListenError(interface, port, e) from None


@implementer(IListeningPort)
class SharedPort:
    """One VIP port bound as one ``SO_REUSEPORT`` socket per worker.

    The control process holds the sockets for as long as the port is in
    the configuration, so a worker replaced, or a new generation, takes
    over the very socket (and the connections waiting on it) the one before
    listened on.

    :param by_source: whether each client address's connections all go to
        one worker (:mod:`ocsbal._steering`), for ``[limits]``.
    :raises CannotListenError: if a socket cannot be bound; none stays then.
    """

    def __init__(
        self,
        vip: str,
        number: int,
        count: int,
        freebind: bool,
        backlog: int,
        *,
        by_source: bool = False,
    ) -> None:
        self.vip, self.number = vip, number
        self.sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = _vip_socket(vip, freebind, reuse_port=True)
                self.sockets.append(sock)
                _listen_on(sock, vip, number, backlog)
        except OSError as e:
            self.stopListening()
            raise CannotListenError(vip, number, e) from None
        self.steer(by_source)

    def steer(self, by_source: bool) -> None:
        """Send a client address's connections to one worker, or spread them.

        A kernel that refuses to steer by source is said in the log: each
        worker then holds a source to its limits on its own.
        """
        if not by_source:
            steer_evenly(self.sockets)
            return
        try:
            steer_by_source(self.sockets, is_ipv6(self.vip))
        except OSError as e:
            log.warn(
                "port {port}: cannot send each client address to one worker "
                "({why}); [limits] hold per worker",
                port=self.number,
                why=e.strerror,
            )

    def startListening(self) -> None:
        """Nothing: the sockets listen from the start, for the workers."""

    def stopListening(self) -> None:
        """Close this process's sockets; a worker closes its own copies."""
        for sock in self.sockets:
            sock.close()

    def getHost(self) -> IPv4Address | IPv6Address:
        """The VIP and port."""
        if is_ipv6(self.vip):
            return IPv6Address("TCP", self.vip, self.number)
        return IPv4Address("TCP", self.vip, self.number)


class _SourcedClient(tcp.Client):
    """A TCP client socket bound to a source address, port chosen at connect.

    ``IP_BIND_ADDRESS_NO_PORT`` lets the kernel pick the source port when it
    connects, unique per destination, rather than when it binds, unique per
    address: one source address then carries some 28,000 connections to
    each server, not 28,000 to them all.  ``transparent`` adds
    ``IP_TRANSPARENT``, to bind an address this host does not hold.
    """

    transparent = False

    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()
        with suppress(OSError):  # a kernel before 4.2 binds the port at once
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if self.transparent:
            _set(sock, IP_TRANSPARENT, IPV6_TRANSPARENT)
        return sock


class _TransparentClient(_SourcedClient):
    transparent = True


class SourcedTCP:
    """A reactor's TCP whose client sockets bind their source address lazily.

    Connections with a ``bindAddress`` made through it take their source
    port at connect (see :class:`_SourcedClient`); with ``transparent``,
    they may bind a client's own address, to connect to servers as that
    client (half-NAT).  They need nothing of a reactor but ``connectTCP``.

    :param reactor: the reactor to connect with.
    :param transparent: whether sockets may bind other hosts' addresses.
    """

    def __init__(self, reactor: ReactorTCPTime, transparent: bool = False) -> None:
        self._reactor = reactor
        self._client = _TransparentClient if transparent else _SourcedClient

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: tuple[str, int] | None = None,
    ) -> Any:
        """Connect as :meth:`IReactorTCP.connectTCP` does, binding lazily."""
        if not isinstance(self._reactor, PosixReactorBase):
            # A memory reactor in tests: it records the attempt, bind and all.
            return self._reactor.connectTCP(host, port, factory, timeout, bindAddress)
        connector = _Connector(host, port, factory, timeout, bindAddress, self._reactor)
        connector.client = self._client
        connector.connect()
        return connector


class _Connector(tcp.Connector):
    client: type[tcp.Client]

    def _makeTransport(self) -> tcp.Client:
        return self.client(self.host, self.port, self.bindAddress, self, self.reactor)
