""":class:`PoolService`: a pool's listeners as a Twisted service.

Add it to any service tree (``pool_service.setServiceParent(application)``),
or let ``twistd ocsbal`` do so.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, cast

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ocsbal._proxy import Balancer, ReactorTCPTime
from ocsbal.config import NatMode
from ocsbal.health import HealthChecks, TCPMonitor
from ocsbal.scheduling import scheduler_class

if TYPE_CHECKING:
    from ocsbal.config import Pool

log = Logger(namespace="ocsbal")

#: OCS 2007 R2 clients may stay silent this long on a live connection.
OCS_IDLE_TIMEOUT = 1800.0

#: After the grace period, connections are closed politely; those that still
#: have not flushed their buffers this many seconds later are aborted.
CLOSE_TIMEOUT = 5.0


class UnsupportedNatError(ValueError):
    """The pool asks for a NAT mode this release cannot provide."""


class PoolService(MultiService):
    """Balance a pool's VIP ports over its servers.

    Listeners are bound in :meth:`privilegedStartService` (so ``twistd`` can
    bind ports below 1024 before dropping privileges) or, for embedders who
    call :meth:`startService` directly, there.  Either all ports bind or the
    start fails and none stays bound.

    The idle sweep and the health checks are child services, as later
    capabilities (the admin interface) will be, which is why this is a
    :class:`MultiService`.

    :param pool: the pool to balance.
    :param reactor: provides TCP and time; the global reactor by default.
    :param grace_period: seconds :meth:`stopService` lets open connections
        run to completion before closing them.
    """

    def __init__(
        self,
        pool: Pool,
        reactor: ReactorTCPTime | None = None,
        grace_period: float = 0.0,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = cast(ReactorTCPTime, _reactor)
        self.pool = pool
        self.grace_period = grace_period
        self._reactor = reactor
        self.balancer = Balancer(pool, reactor, scheduler_class(pool.scheduler)())
        self._ports: list[IListeningPort] = []
        sweep = TimerService(self.balancer.idle.sweep_interval, self.balancer.sweep)
        sweep.clock = reactor
        sweep.setServiceParent(self)
        self.health = HealthChecks(
            self.balancer,
            TCPMonitor(reactor, pool.heartbeat_ports, pool.monitor.timeout),
            pool.monitor.interval,
            reactor,
        )
        self.health.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Bind every VIP port."""
        self._bind()
        super().privilegedStartService()

    def startService(self) -> None:
        """Bind every VIP port if not bound yet; start the idle sweep and checks."""
        if not self._ports:
            self._bind()
        super().startService()
        log.info(
            "pool {pool} ({fqdn}) balancing {ports} ports on {vip} over "
            "{servers} servers with {scheduler}",
            pool=self.pool.name,
            fqdn=self.pool.fqdn,
            ports=len(self._ports),
            vip=self.pool.vip,
            servers=len(self.pool.servers),
            scheduler=self.pool.scheduler,
        )
        if self.pool.idle_timeout < OCS_IDLE_TIMEOUT:
            log.warn(
                "pool {pool}: idle_timeout = {idle_timeout:g} s is below the "
                "{minimum:g} s OCS 2007 R2 requires; quiet clients will be cut off",
                pool=self.pool.name,
                idle_timeout=self.pool.idle_timeout,
                minimum=OCS_IDLE_TIMEOUT,
            )

    def _bind(self) -> None:
        if self.pool.nat is NatMode.HALF:
            # Transparent proxying (IP_TRANSPARENT and policy routing) is not
            # built yet; refusing beats silently running as full-NAT.
            raise UnsupportedNatError(
                f"pool {self.pool.name}: nat = half (transparent proxying) is not "
                "available in this release; use nat = full"
            )
        try:
            for port in self.pool.ports:
                self._ports.append(
                    self._reactor.listenTCP(
                        port.number,
                        self.balancer.listener(port),
                        interface=self.pool.vip,
                    )
                )
        except Exception:
            # Nothing starts half-way: release the ports already bound.
            for bound in self._ports:
                bound.stopListening()
            self._ports = []
            raise

    def stopService(self) -> Deferred[None]:
        """Stop accepting, then close open connections after the grace period.

        The returned Deferred fires once every connection is closed.
        """
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        ports, self._ports = self._ports, []
        await DeferredList([maybeDeferred(p.stopListening) for p in ports])
        await super().stopService()  # the idle sweep and the health checks
        balancer = self.balancer
        if balancer.splices and self.grace_period > 0:
            await self._within(balancer.whenEmpty(), self.grace_period)
        for splice in list(balancer.splices):
            splice.close()
        if balancer.splices:
            await self._within(balancer.whenEmpty(), CLOSE_TIMEOUT)
        for splice in list(balancer.splices):
            splice.abort()

    async def _within(self, d: Deferred[None], seconds: float) -> None:
        """Wait for ``d``, but no longer than ``seconds``."""
        with suppress(TimeoutError):
            await d.addTimeout(seconds, self._reactor)
