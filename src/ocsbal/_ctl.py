"""``ocsbal ctl``: the admin API from a shell, with treq.

The admin endpoint and token come from a pool's ``[admin]`` section
(``--config``) or from a client endpoint string (``--admin``), so the same
client reaches a TCP port or a Unix socket.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.task import react
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from ocsbal._token import AdminTokenError, read_token
from ocsbal._views import (
    show_connections,
    show_pool,
    show_pools,
    show_servers,
    show_workers,
)
from ocsbal.config import Admin, ConfigError, load

#: Seconds any one request may take.
TIMEOUT = 10.0


class CtlError(Exception):
    """A command failed; the message is what to tell the operator."""


def client_endpoint(listen: str) -> str:
    """The client endpoint string that reaches a server endpoint string.

    ``tcp:9900:interface=127.0.0.1`` becomes ``tcp:host=127.0.0.1:port=9900``;
    no interface (or a wildcard one) means loopback; ``unix:PATH`` becomes
    ``unix:path=PATH``.
    """
    kind, *parts = re.split(r"(?<!\\):", listen)
    # The config check parsed it: there is an address or a port.
    positional = [p for p in parts if "=" not in p] + [""]
    options = dict(p.split("=", 1) for p in parts if "=" in p)
    if kind == "unix":
        return f"unix:path={options.get('address', positional[0])}"
    port = options.get("port", positional[0])
    wildcard, loopback = (
        (r"\:\:", r"\:\:1") if kind == "tcp6" else ("0.0.0.0", "127.0.0.1")
    )
    host = options.get("interface", "")
    if host in ("", wildcard, wildcard.replace("\\", "")):
        host = loopback
    # Twisted's client "tcp" takes IPv6 addresses too; there is no client "tcp6".
    return f"tcp:host={host}:port={port}"


#: ``HOST:PORT`` or ``http://HOST:PORT``, an IPv6 address in brackets.
_HOST_PORT = re.compile(r"(?:http://)?(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]@]+):(\d{1,5})/?")
#: Twisted endpoint types the admin interface does not listen on.
_OTHER_ENDPOINTS = ("ssl", "tls", "systemd", "tor", "onion", "stdio")
_ADMIN_FORMS = (
    "HOST:PORT, http://HOST:PORT, or an endpoint such as "
    "tcp:host=127.0.0.1:port=9900 or the [admin] listen string"
)


def admin_endpoint(given: str) -> str:
    """The client endpoint string for ``ocsbal ctl --admin GIVEN``.

    ``given`` is ``HOST:PORT`` or ``http://HOST:PORT`` (an IPv6 address in
    brackets), a client endpoint string (``tcp:host=...:port=...``,
    ``unix:path=...``), or a server endpoint string such as ``[admin]
    listen`` holds (``tcp:9900:interface=127.0.0.1``, ``tcp6:...``,
    ``unix:PATH``), which is reached as :func:`client_endpoint` says.

    :raises CtlError: naming what was given and what is allowed, in one line.
    """
    refused = CtlError(f"--admin {given}: not an admin interface; give {_ADMIN_FORMS}")
    kind, _, rest = given.partition(":")
    found = _HOST_PORT.fullmatch(given)
    if kind in ("tcp", "tcp6", "unix"):
        options = re.split(r"(?<!\\):", rest)
        if kind != "tcp6" and any(o.startswith(("host=", "path=")) for o in options):
            endpoint = given  # already a client's
        elif rest:
            endpoint = client_endpoint(given)
        else:
            raise refused
    elif found is not None and kind not in _OTHER_ENDPOINTS:
        host, port = found[1].strip("[]"), int(found[2])
        if not 0 < port < 65536:
            raise CtlError(
                f"--admin {given}: {port} is not a port; give {_ADMIN_FORMS}"
            )
        return "tcp:host={}:port={}".format(host.replace(":", "\\:"), port)
    else:
        raise refused
    try:
        # Parsing builds the endpoint object only; nothing connects.
        clientFromString(cast(Any, None), endpoint)
    except (ValueError, TypeError, KeyError):
        raise refused from None
    return endpoint


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """Every URL's connection goes to one endpoint: the admin interface's."""

    def __init__(self, reactor: Any, description: str) -> None:
        self.reactor = reactor
        self.description = description

    def endpointForURI(self, uri: Any) -> Any:  # noqa: ARG002
        return clientFromString(self.reactor, self.description)


class AdminClient:
    """Calls the admin API.

    :param http: the treq client to send requests with.
    :param where: names the admin interface in error messages.
    :param token: sent as ``Authorization: Bearer``, if any.
    """

    def __init__(self, http: HTTPClient, where: str, token: bytes | None) -> None:
        self.http = http
        self.where = where
        self.token = token

    async def call(self, method: str, path: str, body: object = None) -> Any:
        """Send one request; return the JSON answer or raise :class:`CtlError`."""
        headers = Headers({b"content-type": [b"application/json"]})
        if self.token is not None:
            headers.addRawHeader(b"authorization", b"Bearer " + self.token)
        data = None if body is None else json.dumps(body).encode()
        try:
            response = await self.http.request(
                method,
                # A Host the admin interface takes whatever address it has.
                f"http://localhost{path}",
                data=data,
                headers=headers,
                timeout=TIMEOUT,
            )
            content = await treq.content(response)
        except ConnectError as e:
            raise CtlError(
                f"cannot reach the admin interface at {self.where}: {e}"
            ) from None
        try:
            answer = json.loads(content) if content else None
        except ValueError:
            raise CtlError(f"{self.where} did not answer with JSON") from None
        if response.code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else answer
            raise CtlError(f"{response.code} {error}")
        return answer


def _count(number: int, thing: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


def _restarted(workers: list[dict[str, Any]], _: argparse.Namespace) -> str:
    new = max(w["generation"] for w in workers)
    old = [w for w in workers if w["generation"] != new]
    serves = f"generation {new} of the workers serves"
    if not old:
        return f"{serves}; the old workers have left"
    held = _count(sum(w["connections"] for w in old), "connection")
    if len(old) == 1:
        return f"{serves}; 1 old worker finishes its {held}"
    return f"{serves}; {len(old)} old workers finish their {held}"


#: What a weight of 0 means, said where a reply would promise connections.
_NO_WEIGHT = "its weight is 0: it takes no new connections until it has one above 0"


def _added(server: dict[str, Any], _: argparse.Namespace) -> str:
    added = f"added {server['name']} ({server['address']}), weight {server['weight']}"
    if not server["weight"]:
        return f"{added}; {_NO_WEIGHT}"
    return f"{added}: it takes connections once its health checks pass"


def _drained(server: dict[str, Any], _: argparse.Namespace) -> str:
    said = f"{server['name']} is draining: no new connections, {server['active']} open"
    move = server.get("move")
    if move:
        said += (
            f"; they are moved to the others within {move['within']:g} s, "
            "each at a quiet moment (a call is never cut)"
        )
    return said


#: What a duration's unit multiplies it by: ``90``, ``90s``, ``10m``, ``1h``.
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def _duration(text: str) -> float:
    """Seconds, from ``600``, ``600s``, ``10m`` or ``1h``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds, or 10m, 1h"
        )
    return float(match[1]) * _UNITS[match[2]]


def _ready(server: dict[str, Any], _: argparse.Namespace) -> str:
    name = server["name"]
    if not server["weight"]:
        return f"{name} is ready, but {_NO_WEIGHT}"
    if server["health"] == "up":
        return f"{name} is ready: it takes new connections"
    # Down, or just back from maint: ready is not enough on its own.
    waiting = f"{name} is ready, and down: it takes new connections once its "
    detail = server["health_detail"]
    return waiting + "health checks pass" + (f" ({detail})" if detail else "")


def _in_maint(server: dict[str, Any], _: argparse.Namespace) -> str:
    return (
        f"{server['name']} is in maintenance: no new connections, no checks, "
        f"{server['active']} open"
    )


def _weighted(server: dict[str, Any], _: argparse.Namespace) -> str:
    if not server["weight"]:
        return f"{server['name']} has weight 0: it takes no new connections"
    return f"{server['name']} has weight {server['weight']} for new connections"


def _removed(server: dict[str, Any], args: argparse.Namespace) -> str:
    removed, active = f"removed {server['name']}", server["active"]
    if not active:
        return f"{removed}: it had no open connections"
    held = _count(active, "open connection")
    if args.force:
        return f"{removed}: its {held} are being closed"
    return f"{removed}: its {held} may finish"


def _forgotten(answer: dict[str, list[str]], args: argparse.Namespace) -> str:
    names = answer["forgotten"]
    if not names:
        which = "any server" if args.name is None else args.name
        return f"the operator has changed nothing of {which}: nothing to forget"
    return (
        f"forgot the operator's changes to {', '.join(names)}: as the pool's "
        "file says from now on"
    )


def _rebalancing(answer: dict[str, bool], _: argparse.Namespace) -> str:
    if not answer["rebalancing"]:
        return "the servers are within rebalance_tolerance of their share"
    return (
        "rebalancing: quiet connections move off the servers above their share, "
        "at rebalance_rate, until the spread is within rebalance_tolerance"
    )


def _shown(show: Callable[[Any], str]) -> Callable[[Any, argparse.Namespace], str]:
    """A view of the answer alone, as a command's reply."""
    return lambda answer, _: show(answer)


#: Each command: how to build its request from the arguments, and how to
#: reply from the answer (and the arguments).
_COMMANDS: dict[
    str,
    tuple[
        Callable[[argparse.Namespace], tuple[str, str, object]],
        Callable[[Any, argparse.Namespace], str],
    ],
] = {
    "servers": (lambda _: ("GET", "/api/servers", None), _shown(show_servers)),
    "pool": (lambda _: ("GET", "/api/pool", None), _shown(show_pool)),
    "connections": (
        lambda _: ("GET", "/api/connections", None),
        _shown(show_connections),
    ),
    "workers": (lambda _: ("GET", "/api/workers", None), _shown(show_workers)),
    "rebalance": (lambda _: ("POST", "/api/rebalance", {}), _rebalancing),
    "pools": (lambda _: ("GET", "/api/pools", None), _shown(show_pools)),
    "restart-workers": (lambda _: ("POST", "/api/workers/restart", {}), _restarted),
    "add": (
        lambda a: (
            "POST",
            "/api/servers",
            {"name": a.name, "address": a.address, "weight": a.weight},
        ),
        _added,
    ),
    "drain": (
        lambda a: (
            "PATCH",
            f"/api/servers/{a.name}",
            {"state": "drain"}
            | ({} if a.move_within is None else {"move_within": a.move_within}),
        ),
        _drained,
    ),
    "ready": (
        lambda a: ("PATCH", f"/api/servers/{a.name}", {"state": "ready"}),
        _ready,
    ),
    "maint": (
        lambda a: ("PATCH", f"/api/servers/{a.name}", {"state": "maint"}),
        _in_maint,
    ),
    "weight": (
        lambda a: ("PATCH", f"/api/servers/{a.name}", {"weight": a.weight}),
        _weighted,
    ),
    "remove": (
        lambda a: (
            "DELETE",
            f"/api/servers/{a.name}" + ("?force=1" if a.force else ""),
            None,
        ),
        _removed,
    ),
    "forget": (
        lambda a: (
            "DELETE",
            "/api/overrides" + ("" if a.name is None else f"/{a.name}"),
            None,
        ),
        _forgotten,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``ocsbal ctl``'s options and commands to ``parser``."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config",
        metavar="POOL.INI",
        help="find the admin interface in this pool's [admin] section",
    )
    where.add_argument(
        "--admin",
        metavar="ENDPOINT",
        help="HOST:PORT, http://HOST:PORT, or a Twisted endpoint string, "
        "e.g. tcp:host=127.0.0.1:port=9900 or [admin] listen's",
    )
    parser.add_argument("--token-file", metavar="FILE", help="send the token in FILE")
    parser.add_argument(
        "--pool",
        metavar="NAME",
        help="the pool a command is for, when the daemon serves several",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON answer")
    # --json may come after the command too, as operators type it; with no
    # default there, one given before the command is not undone.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the JSON answer",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = functools.partial(commands.add_parser, parents=[after])
    command("servers", help="list the servers")
    command("pool", help="show the pool and its listeners")
    command("connections", help="list the open connections")
    command("workers", help="list the worker processes")
    command("pools", help="list the pools the daemon serves")
    command(
        "rebalance",
        help="move quiet connections off the servers above their share, now",
    )
    command(
        "restart-workers",
        help="start new workers; the old ones finish their connections",
    )
    add = command("add", help="add a server")
    add.add_argument("name")
    add.add_argument("address")
    add.add_argument("--weight", type=int, default=100)
    drain = command("drain", help="no new connections for a server; open ones continue")
    drain.add_argument("name")
    drain.add_argument(
        "--move-within",
        metavar="DURATION",
        type=_duration,
        help="and close its connections at quiet moments within DURATION "
        "(600, 10m, 1h), so that their clients move to the others",
    )
    for name, meaning in [
        ("ready", "let a server take new connections again"),
        ("maint", "no new connections and no health checks for a server"),
    ]:
        command(name, help=meaning).add_argument("name")
    weight = command("weight", help="set a server's weight")
    weight.add_argument("name")
    weight.add_argument("weight", type=int)
    remove = command("remove", help="remove a server")
    remove.add_argument("name")
    remove.add_argument(
        "--force", action="store_true", help="close its connections now"
    )
    forget = command(
        "forget",
        help="drop the operator's changes to a server (or all): back to the file",
    )
    which = forget.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?")
    which.add_argument(
        "--all", action="store_true", help="every server the operator changed"
    )


def request_for(args: argparse.Namespace) -> tuple[str, str, object]:
    """The method, path and body of the request the arguments ask for.

    With ``--pool``, the path is that pool's: ``/api/pools/NAME/...``.
    """
    method, path, body = _COMMANDS[args.command][0](args)
    if args.pool is not None and args.command != "pools":
        path = path.replace("/api/", f"/api/pools/{quote(args.pool, safe='')}/", 1)
    return method, path, body


def _target(args: argparse.Namespace) -> tuple[str, Admin]:
    """The client endpoint and the admin settings the arguments name."""
    # The token file may be given relative to where ctl runs.
    token_file = (
        None if args.token_file is None else str(Path(args.token_file).resolve())
    )
    if args.config is None:
        return admin_endpoint(args.admin), Admin(token_file=token_file)
    try:
        admin = load(args.config).admin
    except ConfigError as e:
        raise CtlError(f"invalid configuration:\n{e}") from None
    if admin is None:
        raise CtlError(f"{args.config} has no [admin] section")
    if token_file is not None:
        admin = Admin(admin.listen, token_file)
    return client_endpoint(admin.listen), admin


async def run(args: argparse.Namespace, reactor: Any, out: TextIO = sys.stdout) -> None:
    """Run the command ``args`` names, printing its result to ``out``."""
    endpoint, admin = _target(args)
    try:
        token = read_token(admin)
    except AdminTokenError as e:
        raise CtlError(str(e)) from None
    agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(reactor, endpoint))
    client = AdminClient(HTTPClient(agent), endpoint, token)
    answer = await client.call(*request_for(args))
    reply = _COMMANDS[args.command][1]
    print(json.dumps(answer, indent=2) if args.json else reply(answer, args), file=out)


def main(args: argparse.Namespace) -> int:
    """Run ``ocsbal ctl`` on the global reactor; return the exit status."""
    failed = False

    async def go(reactor: Any) -> None:
        nonlocal failed
        try:
            await run(args, reactor)
        except CtlError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True

    try:
        react(lambda reactor: ensureDeferred(go(reactor)))
    except SystemExit as e:  # react always leaves this way
        if e.code:
            return int(e.code)
    return 1 if failed else 0
