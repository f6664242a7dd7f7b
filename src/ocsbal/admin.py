"""The admin interface: a JSON API, Prometheus metrics and a status page.

One :mod:`twisted.web` site, served on the ``[admin] listen`` endpoint
(loopback by default)::

    GET    /                       the status page (HTML)
    GET    /metrics                Prometheus text format
    GET    /api/pool               settings, listeners, totals
    GET    /api/servers            every server
    POST   /api/servers            add one: {"name", "address", "weight"}
    GET    /api/servers/NAME       one server, or one being removed
    PATCH  /api/servers/NAME       {"weight": N} and/or {"state": "drain"}
                                   (and "move_within": SECONDS, with drain)
    DELETE /api/servers/NAME       remove it (?force=1 closes its connections)
    GET    /api/connections        open client connections
    GET    /api/history            connections per server over the last hour
    GET    /api/workers            the processes that relay
    POST   /api/workers/restart    start a new generation of workers
    POST   /api/rebalance          move quiet clients to a server below its share
    GET    /api/overrides          the operator's changes to the pool's file
    DELETE /api/overrides[/NAME]   forget them
    GET    /api/pools              the pools the daemon serves
    ...    /api/pools/NAME/...     any of the above, of pool NAME

With several pools (``twistd ocsbal --config a.ini --config b.ini``) each
pool's endpoints are under ``/api/pools/NAME``; with one, under ``/api`` as
well.  The status page and ``/metrics`` cover every pool.

With ``token_file`` set, every request must carry the token, as
``Authorization: Bearer TOKEN`` or, for a browser, as the password of HTTP
Basic authentication (any user name).  A refused request gets a 4xx status
and ``{"error": "..."}`` saying why, and changes nothing.

Whatever the token, no web page may drive the interface from a browser
(403): a request's ``Host`` must be ``localhost``, the address the request
came in on, or a name of ``[admin] hosts`` (a page that points a name of
its own at the interface, DNS rebinding, is refused); an ``Origin``, which
browsers send on a page's requests, must be the interface's own; and a
request that changes anything must be ``application/json``, which a page
cannot send across sites without asking first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ocsbal._api import (
    NoWorkersError,
    PoolControl,
    _answer,
    _BoundedRequest,
    _Directory,
    _Endpoint,
    _Exact,
    _NotFound,
    _pool_and_daemon,
    pool_api,
)
from ocsbal._guard import Guard, json_answer
from ocsbal._history import History
from ocsbal._metrics import PoolCollector, WorkersCollector
from ocsbal._model import Admin
from ocsbal._report import servers_report
from ocsbal._status_page import render_status_page
from ocsbal._token import AdminTokenError, read_token

if TYPE_CHECKING:
    from ocsbal._endpoints import ReactorTCPTime

__all__ = [
    "AdminService",
    "AdminTokenError",
    "NoWorkersError",
    "PoolControl",
    "Served",
    "admin_site",
]

#: A pool the admin interface serves: how to read and change it, and its
#: history (which :class:`AdminService` samples).
Served = tuple[PoolControl, History]


def _name(served: Served) -> str:
    return served[0].servers.pool.name


class _Metrics(_Exact):
    def __init__(
        self, pools: Sequence[Served], collectors: tuple[Collector, ...]
    ) -> None:
        super().__init__()
        self.pools = pools
        self.collectors = collectors

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        _answer(request, Deferred.fromCoroutine(self._text()))
        return NOT_DONE_YET

    async def _text(self) -> bytes:
        registry = CollectorRegistry(auto_describe=True)
        controls = [control for control, _ in self.pools]
        counted = await gatherResults([c.figures() for c in controls])
        registry.register(
            PoolCollector(
                [(c.servers, n) for c, n in zip(controls, counted, strict=True)]
            )
        )
        registry.register(
            WorkersCollector([(c.servers.pool.name, c.workers()) for c in controls])
        )
        for collector in self.collectors:
            registry.register(collector)
        return bytes(generate_latest(registry))


class _StatusPage(_Exact):
    def __init__(self, pools: Sequence[Served]) -> None:
        super().__init__()
        self.pools = pools

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        _answer(request, Deferred.fromCoroutine(self._page()))
        return NOT_DONE_YET

    async def _page(self) -> bytes:
        views = []
        for control, history in self.pools:
            servers, counted = control.servers, await control.figures()
            views.append(
                (
                    _pool_and_daemon(servers, counted, history),
                    servers_report(servers, counted, control.overridden),
                    history.report(),
                )
            )
        return render_status_page(views)


class _Api(Resource):
    """``/api``: ``/api/pools``, and with one pool, that pool's endpoints."""

    def __init__(self, pools: Sequence[Served]) -> None:
        super().__init__()
        self.pools = pools

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"pools":
            return _Pools(self.pools)
        if len(self.pools) == 1:
            child: Resource = pool_api(*self.pools[0]).getChildWithDefault(
                path, request
            )
            return child
        if path in pool_api(*self.pools[0]).children:
            names = ", ".join(map(_name, self.pools))
            return _Refused(
                f"this daemon serves several pools ({names}): use "
                f"/api/pools/NAME/{path.decode('ascii', 'replace')}"
            )
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return json_answer(request, 404, {"error": "no such resource"})


class _Pools(_Endpoint):
    """``/api/pools``: the pools, and each one's endpoints below its name."""

    def __init__(self, pools: Sequence[Served]) -> None:
        super().__init__(pools[0][0])
        self.pools = pools

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        for served in self.pools:
            if _name(served).encode() == path:
                return pool_api(*served)
        return _Refused(f"no pool named {path.decode('utf-8', 'replace')}", 404)

    def do_GET(self, _request: Request) -> object:
        return [
            {
                "name": pool.name,
                "fqdn": pool.fqdn,
                "vip": pool.vip,
                "kind": pool.kind.value,
                "ports": [port.number for port in pool.ports],
                "servers": len(pool.servers),
            }
            for pool in (control.servers.pool for control, _ in self.pools)
        ]


class _Refused(Resource):
    isLeaf = True

    def __init__(self, error: str, status: int = 404) -> None:
        super().__init__()
        self.error, self.status = error, status

    def render(self, request: Request) -> bytes:
        return json_answer(request, self.status, {"error": self.error})


def admin_site(
    pools: Sequence[Served],
    token: Callable[[], bytes | None],
    collectors: tuple[Collector, ...] = (),
    admin: Callable[[], Admin] = Admin,
) -> Site:
    """The admin site of the pools a daemon runs.

    :param pools: the pools; read at each request, so a pool added to the
        sequence later is served from then on.
    :param token: returns the token requests must carry, or ``None``; called
        for each request, so a reloaded token applies at once.
    :param collectors: more Prometheus collectors for ``/metrics``, besides
        the pools' own (e.g. a ``ProcessCollector``).
    :param admin: returns the ``[admin]`` settings in force (the names
        requests may give as their ``Host``); called for each request.
    """
    root = _Directory()
    root.putChild(b"", _StatusPage(pools))
    root.putChild(b"api", _Api(pools))
    root.putChild(b"metrics", _Metrics(pools, collectors))
    site = Site(Guard(root, token, admin), requestFactory=_BoundedRequest)
    site.noisy = False
    site.displayTracebacks = False
    return site


class AdminService(StreamServerEndpointService):
    """Serves the admin site on its ``[admin] listen`` endpoint.

    It serves the pool it is made for, and any other given to
    :meth:`serve` (a daemon running several pools has one interface).  The
    token file is read before listening, so a missing token stops the start
    instead of leaving the API open; a reload hands over the token it read
    with :meth:`use`.  While it runs, it samples the connections of each
    server of each pool into its history every :attr:`History.interval`
    seconds.

    :ivar pools: the pools served, each with its history.
    """

    #: A port that cannot be bound stops the start, as the VIP's ports do
    #: (the flag strports itself sets for this).
    _raiseSynchronously = True

    def __init__(
        self, control: PoolControl, admin: Admin, reactor: ReactorTCPTime
    ) -> None:
        self.admin = admin
        self._token: bytes | None = None
        self._reactor = reactor
        self.pools: list[Served] = []
        self._sampling = LoopingCall(self._sample)
        self._sampling.clock = reactor
        self.serve(control)
        process = ProcessCollector(registry=None)
        site = admin_site(
            self.pools, lambda: self._token, (process,), lambda: self.admin
        )
        super().__init__(serverFromString(reactor, admin.listen), site)

    @property
    def history(self) -> History:
        """The first pool's history (the only one's, with one pool)."""
        return self.pools[0][1]

    def serve(self, control: PoolControl) -> None:
        """Serve another pool too, from now on."""
        self.pools.append((control, History(self._reactor)))

    def _sample(self) -> None:
        for control, history in self.pools:
            history.sample(control.servers)

    def privilegedStartService(self) -> None:
        """Read the token, then listen."""
        self._token = read_token(self.admin)
        super().privilegedStartService()

    def startService(self) -> None:
        """Listen, and take a sample now and every interval from now on."""
        super().startService()
        self._sampling.start(self.history.interval)

    def stopService(self) -> Deferred[None]:
        """Stop sampling and listening; fires once no longer listening."""
        if self._sampling.running:
            self._sampling.stop()
        stopped: Deferred[None] = super().stopService()
        return stopped

    def use(self, admin: Admin, token: bytes | None) -> None:
        """Take ``admin``'s token file, already read as ``token``, from now on."""
        self.admin, self._token = admin, token
