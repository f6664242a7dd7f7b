"""The admin API of one pool: its JSON endpoints, under ``/api`` or ``/api/pools/NAME``.

:func:`pool_api` is the directory of one pool's endpoints
(:mod:`ocsbal.admin` routes to it); each endpoint answers JSON by method,
with JSON errors, and reads the pool through a :class:`PoolControl`.
"""

from __future__ import annotations

import inspect
import io
import json
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ocsbal._guard import json_answer
from ocsbal._history import History
from ocsbal._model import ConfigError, Server
from ocsbal._pool import AdminState, LastServerError, UnknownServerError
from ocsbal._report import pool_report, server_report, servers_report

if TYPE_CHECKING:
    from ocsbal._moving import Mover
    from ocsbal._pool import Backend, RunningPool

__all__ = ["MAX_BODY", "NoWorkersError", "PoolControl", "pool_api"]

log = Logger(namespace="ocsbal")


class PoolControl(Protocol):
    """What the admin interface needs of a running pool.

    Its servers and the figures of their connections, to report; and the
    changes an operator makes, each of which returns a Deferred that
    fires once it is in force everywhere (in every worker process).
    :class:`ocsbal.PoolService` is one.
    """

    @property
    def servers(self) -> RunningPool:
        """The pool's servers: configuration, state and health."""

    def figures(self, connections: bool = False) -> Deferred[dict[str, Any]]:
        """What the pool's processes count (:func:`ocsbal._report.figures`)."""

    def workers(self) -> list[dict[str, Any]]:
        """The processes that relay: ``pid``, ``started``, ``restarts``..."""

    def add_server(self, server: Server) -> Deferred[None]:
        """Add ``server``; see :meth:`ocsbal.PoolService.add_server`."""

    def remove_server(self, name: str, force: bool = False) -> Deferred[None]:
        """Remove a server; see :meth:`ocsbal.PoolService.remove_server`."""

    def reweight(self, name: str, weight: int) -> Deferred[None]:
        """Re-weight a server; see :meth:`ocsbal.PoolService.reweight`."""

    def set_state(
        self, name: str, state: AdminState, move_within: float | None = None
    ) -> Deferred[None]:
        """Drain a server, or the like; see :meth:`ocsbal.PoolService.set_state`."""

    def restart_workers(self) -> Deferred[None]:
        """Start a new generation of workers; see ``docs/operations.md``."""

    def overridden(self, name: str) -> dict[str, Any]:
        """What server ``name`` runs with that the pool's file does not say."""

    @property
    def mover(self) -> Mover:
        """Moves drained servers' clients, and rebalances (:mod:`ocsbal._moving`)."""

    def every_override(self) -> dict[str, dict[str, Any]]:
        """:meth:`overridden` of every server the operator changed, by name."""

    def forget(self, name: str | None = None) -> Deferred[list[str]]:
        """Drop the operator's changes; see :meth:`ocsbal.PoolService.forget`."""


class NoWorkersError(Exception):
    """The pool runs in one process: it has no workers to restart."""


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


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return json_answer(request, 404, {"error": "no such resource"})


class _Exact(Resource):
    """A resource that answers its own path only: any path below is a 404."""

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        return _NotFound()


class _Endpoint(_Exact):
    """A resource answering JSON, by method, with JSON errors.

    Subclasses define ``do_GET``, ``do_POST``... returning the body to send
    (status 200 unless they set another), or a coroutine giving it, or
    raising :class:`_RequestError`.  ``HEAD`` is answered as ``GET``,
    without the body.
    """

    def __init__(self, control: PoolControl) -> None:
        super().__init__()
        self.control = control

    def backend(self, name: str) -> Backend:
        """The server called ``name``, or one being removed; unknown, a 404."""
        return self.control.servers.find(name)

    def refuse_removing(self, name: str, then: str) -> None:
        """Refuse (409) while only servers being removed are called ``name``.

        :param then: what the refusal says after its open connections.
        """
        if active := self.control.servers.removing_only(name):
            _refuse(
                409,
                f"{name} is being removed and still has {active} open connection"
                f"{'' if active == 1 else 's'}{then}; a DELETE of it with "
                f"?force=1 (ocsbal ctl remove --force {name}) closes them now",
            )

    async def report(self, backend: Backend) -> dict[str, Any]:
        """``backend``'s report, with the figures of its connections."""
        counted = await self.control.figures()
        kind = "leaving" if backend.removed else "servers"
        monitor = self.control.servers.pool.monitor
        return server_report(
            backend,
            monitor,
            counted[kind].get(backend.name),
            self.control.overridden(backend.name),
            self.control.mover.report(backend.name),
        )

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"  # twisted.web drops the body
        handler: Callable[[Request], object] | None = getattr(
            self, f"do_{method}", None
        )
        if handler is None:
            allowed = sorted(n[3:] for n in dir(self) if n.startswith("do_"))
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return json_answer(request, 405, {"error": f"method {method} not allowed"})
        _answer(request, Deferred.fromCoroutine(_body_of(handler, request)))
        return NOT_DONE_YET


async def _body_of(handler: Callable[[Request], object], request: Request) -> bytes:
    try:
        body = handler(request)
        if inspect.isawaitable(body):
            body = await body
        # A handler may have set its own success status, such as 201.
        return json_answer(request, request.code, body)
    except _RequestError as e:
        return json_answer(request, e.status, {"error": str(e)})
    except UnknownServerError as e:
        return json_answer(request, 404, {"error": str(e)})


def _answer(request: Request, body: Deferred[bytes]) -> None:
    """Send ``body`` when it comes, unless the client has gone by then."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def send(data: bytes) -> None:
        if not gone:
            request.setHeader(b"content-length", str(len(data)).encode())
            request.write(data)
            request.finish()

    body.addCallback(send).addErrback(
        lambda f: log.failure("the admin request failed", f)
    )


#: A JSON field's Python type, and how to name it to a person.
_STRING = (str, "a string")
_WHOLE = (int, "a whole number")
_SECONDS = ((int, float), "a number of seconds")


def _body(
    request: Request, allowed: dict[str, tuple[type | tuple[type, ...], str]]
) -> dict[str, Any]:
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


class _Remembering(_Endpoint):
    """An endpoint that tells of the daemon's past too."""

    def __init__(self, control: PoolControl, history: History) -> None:
        super().__init__(control)
        self.history = history


def _pool_and_daemon(
    servers: RunningPool, counted: dict[str, Any], history: History
) -> dict[str, Any]:
    """``/api/pool``: the pool's report, and the daemon's (version, uptime)."""
    return pool_report(servers, counted) | {"daemon": history.about()}


class _PoolEndpoint(_Remembering):
    async def do_GET(self, _request: Request) -> object:
        counted = await self.control.figures()
        return _pool_and_daemon(self.control.servers, counted, self.history)


class _HistoryEndpoint(_Remembering):
    def do_GET(self, _request: Request) -> object:
        return self.history.report()


class _ConnectionsEndpoint(_Endpoint):
    async def do_GET(self, _request: Request) -> object:
        counted = await self.control.figures(connections=True)
        return counted["connections"]


class _WorkersEndpoint(_Endpoint):
    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        if not path:
            return self
        if path == b"restart":
            return _RestartEndpoint(self.control)
        return _NotFound()

    def do_GET(self, _request: Request) -> object:
        return self.control.workers()


class _RestartEndpoint(_Endpoint):
    async def do_POST(self, _request: Request) -> object:
        try:
            await self.control.restart_workers()
        except NoWorkersError as e:
            _refuse(409, str(e))
        return self.control.workers()


class _OverridesEndpoint(_Endpoint):
    """``/api/overrides``: the operator's changes to the file, by server."""

    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        if not path:
            return self
        return _OverrideEndpoint(self.control, path.decode("utf-8", "replace"))

    def do_GET(self, _request: Request) -> object:
        return self.control.every_override()

    async def do_DELETE(self, _request: Request) -> object:
        return {"forgotten": await self.control.forget()}


class _OverrideEndpoint(_Endpoint):
    def __init__(self, control: PoolControl, name: str) -> None:
        super().__init__(control)
        self.name = name

    async def do_DELETE(self, _request: Request) -> object:
        return {"forgotten": await self.control.forget(self.name)}


class _ServersEndpoint(_Endpoint):
    def getChild(self, path: bytes, request: Request) -> Resource:  # noqa: ARG002
        if not path:
            return self
        return _ServerEndpoint(self.control, path.decode("utf-8", "replace"))

    async def do_GET(self, _request: Request) -> object:
        counted = await self.control.figures()
        return servers_report(self.control.servers, counted, self.control.overridden)

    async def do_POST(self, request: Request) -> object:
        fields = _body(request, {"name": _STRING, "address": _STRING, "weight": _WHOLE})
        missing = [key for key in ("name", "address") if key not in fields]
        if missing:
            _refuse(400, f"missing field {missing[0]!r}")
        try:
            server = Server(**fields)
            self.refuse_removing(server.name, ": its name is free once they close")
            await self.control.add_server(server)
        except ConfigError as e:
            _refuse(409, "; ".join(map(str, e.problems)))
        except ValueError as e:
            _refuse(400, str(e))
        request.setResponseCode(201)
        request.setHeader(b"location", f"/api/servers/{server.name}".encode())
        return await self.report(self.backend(server.name))


class _ServerEndpoint(_Endpoint):
    def __init__(self, control: PoolControl, name: str) -> None:
        super().__init__(control)
        self.name = name

    async def do_GET(self, _request: Request) -> object:
        return await self.report(self.backend(self.name))

    async def do_PATCH(self, request: Request) -> object:
        fields = _body(
            request, {"weight": _WHOLE, "state": _STRING, "move_within": _SECONDS}
        )
        self.refuse_removing(self.name, ": its state and weight no longer matter")
        backend = self.backend(self.name)
        # Check everything before changing anything.
        state = fields.get("state", backend.state.value)
        try:
            new_state = AdminState(state)
        except ValueError:
            choices = ", ".join(s.value for s in AdminState)
            _refuse(400, f"state must be one of {choices}")
        move_within = fields.get("move_within")
        if move_within is not None and (
            new_state is not AdminState.DRAIN or not 0 < move_within < math.inf
        ):
            _refuse(400, "move_within must be seconds above 0, with state drain")
        weight = fields.get("weight", backend.server.weight)
        try:
            attrs.evolve(backend.server, weight=weight)
        except ValueError as e:
            _refuse(400, str(e))
        if weight != backend.server.weight:
            await self.control.reweight(self.name, weight)
        await self.control.set_state(self.name, new_state, move_within)
        return await self.report(backend)

    async def do_DELETE(self, request: Request) -> object:
        force = request.args.get(b"force", [b"0"])[-1] in (b"1", b"yes", b"true")
        if not force:
            self.refuse_removing(self.name, ", which may finish")
        backend = self.backend(self.name)
        try:
            await self.control.remove_server(self.name, force=force)
        except LastServerError as e:
            _refuse(409, str(e))
        return await self.report(backend)


class _Directory(_Exact):
    """A resource with fixed children; any other path, or its own, is a 404."""

    def render(self, request: Request) -> bytes:
        return json_answer(request, 404, {"error": "no such resource"})


class _RebalanceEndpoint(_Endpoint):
    """``POST /api/rebalance``: one rebalance, now.

    It runs until the spread is within ``rebalance_tolerance``, at
    ``rebalance_rate``, as ``[pool] rebalance = yes`` would.
    """

    def do_POST(self, _request: Request) -> object:
        mover = self.control.mover
        mover.rebalance()
        return {"rebalancing": mover.rebalancing}


def pool_api(control: PoolControl, history: History) -> Resource:
    """The endpoints of one pool, as the children of one directory."""
    api = _Directory()
    api.putChild(b"pool", _PoolEndpoint(control, history))
    api.putChild(b"history", _HistoryEndpoint(control, history))
    api.putChild(b"servers", _ServersEndpoint(control))
    api.putChild(b"connections", _ConnectionsEndpoint(control))
    api.putChild(b"workers", _WorkersEndpoint(control))
    api.putChild(b"overrides", _OverridesEndpoint(control))
    api.putChild(b"rebalance", _RebalanceEndpoint(control))
    return api
