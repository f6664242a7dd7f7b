"""The admin interface: a JSON API, Prometheus metrics and a status page.

One :mod:`twisted.web` site, served on the ``[admin] listen`` endpoint
(loopback by default)::

    GET    /                       the status page (HTML)
    GET    /metrics                Prometheus text format
    GET    /api/pool               settings, listeners, totals
    GET    /api/servers            every server
    POST   /api/servers            add one: {"name", "address", "weight"}
    GET    /api/servers/NAME       one server
    PATCH  /api/servers/NAME       {"weight": N} and/or {"state": "drain"}
    DELETE /api/servers/NAME       remove it (?force=1 closes its connections)
    GET    /api/connections        open client connections

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

import base64
import binascii
import hmac
import io
import ipaddress
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import urlsplit

import attrs
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.registry import Collector
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from ocsbal._metrics import PoolCollector
from ocsbal._model import Admin, ConfigError, Server
from ocsbal._pool import AdminState, LastServerError, UnknownServerError
from ocsbal._report import (
    connections_report,
    pool_report,
    server_report,
    servers_report,
)
from ocsbal._status_page import render_status_page
from ocsbal._token import AdminTokenError, read_token

if TYPE_CHECKING:
    from ocsbal._pool import Backend
    from ocsbal._relay import Relay


class PoolControl(Protocol):
    """What the admin interface needs of a running pool.

    Its connections, and through them its servers, to report; and the
    changes an operator makes.  :class:`ocsbal.PoolService` is one.
    """

    @property
    def relay(self) -> Relay:
        """The pool's connections, and its servers (``relay.servers``)."""

    def add_server(self, server: Server) -> None:
        """Add ``server``; see :meth:`ocsbal.PoolService.add_server`."""

    def remove_server(self, name: str, force: bool = False) -> None:
        """Remove a server; see :meth:`ocsbal.PoolService.remove_server`."""

    def reweight(self, name: str, weight: int) -> None:
        """Re-weight a server; see :meth:`ocsbal.PoolService.reweight`."""

    def set_state(self, name: str, state: AdminState) -> None:
        """Drain a server, or the like; see :meth:`ocsbal.PoolService.set_state`."""


__all__ = ["AdminService", "AdminTokenError", "PoolControl", "admin_site"]

#: The largest request body accepted; the API's bodies are a few fields.
MAX_BODY = 64 * 1024


class _BoundedRequest(Request):
    """A request that keeps at most :data:`MAX_BODY` + 1 bytes of its body.

    twisted.web would spool a large body to a temporary file before any
    resource sees it, token or not; this one keeps the first bytes in
    memory, enough for :func:`_body` to know it is too long, and drops the
    rest as it arrives.
    """

    def gotLength(self, length: int | None) -> None:  # noqa: ARG002 -- any length
        self.content = self._kept = io.BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        room = MAX_BODY + 1 - self._kept.tell()
        if room > 0:
            self._kept.write(data[:room])


class _RequestError(Exception):
    """A request is refused with ``status``; ``message`` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _refuse(status: int, message: str) -> NoReturn:
    raise _RequestError(status, message)


def _json(request: Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body, indent=2).encode() + b"\n"


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "no such resource"})


class _Exact(Resource):
    """A resource that answers its own path only: any path below is a 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        return _NotFound()


class _Endpoint(_Exact):
    """A resource answering JSON, by method, with JSON errors.

    Subclasses define ``do_GET``, ``do_POST``... returning the body to send
    (status 200 unless they set another) or raising :class:`_RequestError`.
    ``HEAD`` is answered as ``GET``, without the body.
    """

    def __init__(self, control: PoolControl) -> None:
        super().__init__()
        self.control = control

    def backend(self, name: str) -> Backend:
        """The server called ``name``; unknown, a 404."""
        return self.control.relay.servers.backend(name)

    def render(self, request: Request) -> bytes:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"  # twisted.web drops the body
        handler: Callable[[Request], object] | None = getattr(
            self, f"do_{method}", None
        )
        if handler is None:
            allowed = sorted(n[3:] for n in dir(self) if n.startswith("do_"))
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return _json(request, 405, {"error": f"method {method} not allowed"})
        try:
            body = handler(request)
            # A handler may have set its own success status, such as 201.
            return _json(request, request.code, body)
        except _RequestError as e:
            return _json(request, e.status, {"error": str(e)})
        except UnknownServerError as e:
            return _json(request, 404, {"error": str(e)})


#: A JSON field's Python type, and how to name it to a person.
_STRING = (str, "a string")
_WHOLE = (int, "a whole number")


def _body(request: Request, allowed: dict[str, tuple[type, str]]) -> dict[str, Any]:
    """The request's JSON object, holding only ``allowed`` fields of their types."""
    raw = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(raw) > MAX_BODY:
        _refuse(413, f"the body is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        _refuse(400, f"the body is not JSON: {e}")
    except RecursionError:
        _refuse(400, "the body is not JSON that can be read: nested too deep")
    if not isinstance(body, dict):
        _refuse(400, "the body must be a JSON object")
    for key, value in body.items():
        if key not in allowed:
            _refuse(400, f"unknown field {key!r}; allowed: {', '.join(allowed)}")
        kind, name = allowed[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            _refuse(400, f"{key} must be {name}")
    return body


class _PoolEndpoint(_Endpoint):
    def do_GET(self, _request: Request) -> object:
        return pool_report(self.control.relay)


class _ConnectionsEndpoint(_Endpoint):
    def do_GET(self, _request: Request) -> object:
        return connections_report(self.control.relay)


class _ServersEndpoint(_Endpoint):
    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        if not path:
            return self
        return _ServerEndpoint(self.control, path.decode("utf-8", "replace"))

    def do_GET(self, _request: Request) -> object:
        return servers_report(self.control.relay)

    def do_POST(self, request: Request) -> object:
        fields = _body(request, {"name": _STRING, "address": _STRING, "weight": _WHOLE})
        missing = [key for key in ("name", "address") if key not in fields]
        if missing:
            _refuse(400, f"missing field {missing[0]!r}")
        try:
            server = Server(**fields)
            self.control.add_server(server)
        except ConfigError as e:
            _refuse(409, "; ".join(map(str, e.problems)))
        except ValueError as e:
            _refuse(400, str(e))
        request.setResponseCode(201)
        request.setHeader(b"location", f"/api/servers/{server.name}".encode())
        return server_report(self.backend(server.name))


class _ServerEndpoint(_Endpoint):
    def __init__(self, control: PoolControl, name: str) -> None:
        super().__init__(control)
        self.name = name

    def do_GET(self, _request: Request) -> object:
        return server_report(self.backend(self.name))

    def do_PATCH(self, request: Request) -> object:
        fields = _body(request, {"weight": _WHOLE, "state": _STRING})
        backend = self.backend(self.name)
        # Check everything before changing anything.
        state = fields.get("state", backend.state.value)
        try:
            new_state = AdminState(state)
        except ValueError:
            choices = ", ".join(s.value for s in AdminState)
            _refuse(400, f"state must be one of {choices}")
        weight = fields.get("weight", backend.weight)
        try:
            attrs.evolve(backend.server, weight=weight)
        except ValueError as e:
            _refuse(400, str(e))
        if weight != backend.weight:
            self.control.reweight(self.name, weight)
        self.control.set_state(self.name, new_state)
        return server_report(backend)

    def do_DELETE(self, request: Request) -> object:
        force = request.args.get(b"force", [b"0"])[-1] in (b"1", b"yes", b"true")
        backend = self.backend(self.name)
        try:
            self.control.remove_server(self.name, force=force)
        except LastServerError as e:
            _refuse(409, str(e))
        return server_report(backend)


class _Metrics(_Exact):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return bytes(generate_latest(self.registry))


class _StatusPage(_Exact):
    def __init__(self, control: PoolControl) -> None:
        super().__init__()
        self.control = control

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        relay = self.control.relay
        return render_status_page(pool_report(relay), servers_report(relay))


class _Directory(_Exact):
    """A resource with fixed children; any other path, or its own, is a 404."""

    def render(self, request: Request) -> bytes:
        return _json(request, 404, {"error": "no such resource"})


class _Guard(Resource):
    """Lets a request through to ``root`` only if nothing about it is refused.

    First what keeps web pages out (see the module docstring), then the
    token.
    """

    def __init__(
        self,
        root: Resource,
        token: Callable[[], bytes | None],
        admin: Callable[[], Admin],
    ) -> None:
        super().__init__()
        self.root = root
        self.token = token
        self.admin = admin

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        refused = self._from_a_page(request)
        if refused is not None:
            return _Refused(403, refused)
        if not self._authorized(request):
            return _Unauthorized()
        child: IResource = self.root.getChildWithDefault(path, request)
        return child

    def _from_a_page(self, request: Request) -> str | None:
        """Why a browser may have sent ``request`` for a web page, if it may."""
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if host and not self._ours(host, request):
            return (
                f"Host {host} is not a name of this admin interface: use its "
                "address or localhost, or list the name in [admin] hosts"
            )
        origin = request.getHeader(b"origin")
        if origin is not None and origin.lower() != f"http://{host}".lower().encode():
            return (
                f"requests from the web page at {origin.decode('latin-1')} are "
                "refused: only this interface's own pages may call it"
            )
        if request.method not in (b"GET", b"HEAD"):
            kind = (request.getHeader(b"content-type") or b"").partition(b";")[0]
            if kind.strip().lower() != b"application/json":
                return (
                    "a request that changes anything must be sent as "
                    "Content-Type: application/json"
                )
        return None

    def _ours(self, host: str, request: Request) -> bool:
        """Whether ``host`` (a Host header) names this interface."""
        try:
            name = urlsplit(f"//{host}").hostname or ""
        except ValueError:  # a port that is no number
            return False
        if name == "localhost" or name in self.admin().hosts:
            return True
        here = request.getHost()
        if not isinstance(here, IPv4Address | IPv6Address):
            return True  # a Unix socket, which no browser reaches
        try:
            return ipaddress.ip_address(name) == ipaddress.ip_address(here.host)
        except ValueError:  # a name, not an address
            return False

    def _authorized(self, request: Request) -> bool:
        token = self.token()
        if token is None:
            return True
        scheme, _, credentials = (
            (request.getHeader(b"authorization") or b"").strip().partition(b" ")
        )
        if scheme.lower() == b"basic":
            try:
                credentials = base64.b64decode(credentials, validate=True)
            except binascii.Error:
                return False
            credentials = credentials.partition(b":")[2]
        elif scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), token)


class _Refused(Resource):
    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return _json(request, self.status, {"error": self.message})


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(
            b"www-authenticate", b'Bearer realm="ocsbal", Basic realm="ocsbal"'
        )
        return _json(request, 401, {"error": "a valid admin token is required"})


def admin_site(
    control: PoolControl,
    token: Callable[[], bytes | None],
    collectors: tuple[Collector, ...] = (),
    admin: Callable[[], Admin] = Admin,
) -> Site:
    """The admin site of a running pool.

    :param token: returns the token requests must carry, or ``None``; called
        for each request, so a reloaded token applies at once.
    :param collectors: more Prometheus collectors for ``/metrics``, besides
        the pool's own (e.g. a ``ProcessCollector``).
    :param admin: returns the ``[admin]`` settings in force (the names
        requests may give as their ``Host``); called for each request.
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PoolCollector(control.relay))
    for collector in collectors:
        registry.register(collector)
    root = _Directory()
    api = _Directory()
    root.putChild(b"", _StatusPage(control))
    root.putChild(b"api", api)
    root.putChild(b"metrics", _Metrics(registry))
    api.putChild(b"pool", _PoolEndpoint(control))
    api.putChild(b"servers", _ServersEndpoint(control))
    api.putChild(b"connections", _ConnectionsEndpoint(control))
    site = Site(_Guard(root, token, admin), requestFactory=_BoundedRequest)
    site.noisy = False
    site.displayTracebacks = False
    return site


class AdminService(StreamServerEndpointService):
    """Serves a pool's admin site on its ``[admin] listen`` endpoint.

    The token file is read before listening, so a missing token stops the
    start instead of leaving the API open; a reload hands over the token it
    read with :meth:`use`.
    """

    #: A port that cannot be bound stops the start, as the VIP's ports do
    #: (the flag strports itself sets for this).
    _raiseSynchronously = True

    def __init__(
        self, control: PoolControl, admin: Admin, reactor: IReactorCore
    ) -> None:
        self.admin = admin
        self._token: bytes | None = None
        process = ProcessCollector(registry=None)
        site = admin_site(control, lambda: self._token, (process,), lambda: self.admin)
        super().__init__(serverFromString(reactor, admin.listen), site)

    def privilegedStartService(self) -> None:
        """Read the token, then listen."""
        self._token = read_token(self.admin)
        super().privilegedStartService()

    def use(self, admin: Admin, token: bytes | None) -> None:
        """Take ``admin``'s token file, already read as ``token``, from now on."""
        self.admin, self._token = admin, token
