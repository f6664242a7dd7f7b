"""The pool model: frozen, validated attrs classes, and the rules they keep.

One model serves everyone: :mod:`ocsbal.config` reads an INI file into a
:class:`Pool`, and an embedder builds the same :class:`Pool` in code.

Every rule lives once, here, as a :class:`_Rule` that both checks a field
when a class is built (it is the field's attrs validator) and reads that
field's INI value for :mod:`ocsbal.config`.  What fields must be true of
each other is checked once, by :func:`relations`, when a :class:`Pool` is
built, or on a file's draft when some of its values were refused.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from typing import Any, Generic, Protocol, TypeVar, cast

import attrs

from ocsbal.scheduling import scheduler_class

__all__ = [
    "HEARTBEAT_PORTS",
    "OCS_PORTS",
    "Admin",
    "ConfigError",
    "Monitor",
    "MonitorType",
    "NatMode",
    "Pool",
    "PoolKind",
    "Port",
    "PortProtocol",
    "Problem",
    "Server",
    "TLSMode",
    "TLSSettings",
    "relations",
]

_T = TypeVar("_T")


class PortProtocol(enum.Enum):
    """What a VIP port carries, which decides how much ocsbal looks at it."""

    #: Any TCP stream, relayed blind.
    TCP = "tcp"
    #: SIP over TCP (OCS: 5060).
    SIP = "sip"
    #: SIP over TLS (OCS: 5061): relayed encrypted, or decrypted and
    #: followed as ``sip`` is, as the ``[tls]`` mode says.
    SIPS = "sips"


class PoolKind(enum.Enum):
    """The OCS 2007 R2 role of the pool behind the VIP."""

    ENTERPRISE = "enterprise"
    DIRECTOR = "director"
    WEB_ACCESS = "web-access"
    EDGE = "edge"

    @property
    def internal(self) -> bool:
        """Whether the pool's servers connect to their own VIP (all but Edge)."""
        return self is not PoolKind.EDGE


class NatMode(enum.Enum):
    """How connections to the servers are addressed."""

    #: Proxy (source NAT): servers see connections from the load balancer.
    FULL = "full"
    #: Transparent (destination NAT only): servers see the client's address.
    HALF = "half"


class _NotAllowedError(ValueError):
    """A value is not allowed; the message says what is."""


class _Rule(Generic[_T]):
    """One field's rule: how to read it from INI text and what it may hold.

    An instance is the attrs validator of its field, so a class built in code
    is held to exactly the rule an INI file is.
    """

    def __init__(self, read: Callable[[str], _T], check: Callable[[_T], None]) -> None:
        self._read = read
        self._check = check

    def explain(self, value: _T) -> str | None:
        """Say what is allowed if ``value`` is not, else return ``None``."""
        try:
            self._check(value)
        except ValueError as e:
            return str(e)
        return None

    def read(self, text: str) -> _T:
        """Read and check an INI value, or say what is allowed (:class:`ValueError`)."""
        value = self._read(text.strip())
        problem = self.explain(value)
        if problem is not None:
            raise _NotAllowedError(problem)
        return value

    def __call__(
        self, _instance: object, attribute: attrs.Attribute[_T], value: _T
    ) -> None:
        problem = self.explain(value)
        if problem is not None:
            raise ValueError(f"{attribute.name} = {value!r}: {problem}")


def _choices(kind: type[enum.Enum]) -> str:
    return ", ".join(member.value for member in kind)


def _enum_rule(kind: type[Any], special: dict[str, str] | None = None) -> _Rule[Any]:
    allowed = f"must be one of {_choices(kind)}"

    def read(text: str) -> Any:
        if special and text.lower() in special:
            raise _NotAllowedError(special[text.lower()])
        try:
            return kind(text.lower())
        except ValueError:
            raise _NotAllowedError(allowed) from None

    def check(value: object) -> None:
        if not isinstance(value, kind):
            raise _NotAllowedError(allowed)

    return _Rule(read, check)


_N = TypeVar("_N", int, float)


def _number_rule(kind: type[_N], allowed: str, ok: Callable[[_N], bool]) -> _Rule[_N]:
    """A rule for an ``int`` or ``float`` field; ``bool`` is never a number here."""

    def read(text: str) -> _N:
        try:
            return kind(text)
        except ValueError:
            raise _NotAllowedError(allowed) from None

    def check(value: _N) -> None:
        numeric = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric) or not ok(value):
            raise _NotAllowedError(allowed)

    return _Rule(read, check)


def _whole_rule(low: int, high: int | None = None) -> _Rule[int]:
    if high is None:
        return _number_rule(int, f"must be a whole number, {low} or more", low.__le__)
    return _number_rule(
        int, f"must be a whole number from {low} to {high}", lambda n: low <= n <= high
    )


def _seconds_rule() -> _Rule[float]:
    return _number_rule(
        float,
        "must be a number of seconds greater than 0",
        lambda s: math.isfinite(s) and s > 0,
    )


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "no": False,
    "false": False,
    "off": False,
}


def _read_boolean(text: str) -> bool:
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise _NotAllowedError("must be yes or no") from None


def _check_boolean(value: bool) -> None:
    if not isinstance(value, bool):
        raise _NotAllowedError("must be yes or no")


def _normal_address(value: Any) -> Any:
    """Write an IP address the one way Python does, leaving anything else alone."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _check_address(value: str) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise _NotAllowedError(
            "must be a static IPv4 or IPv6 address, not a host name"
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise _NotAllowedError("must be one host's unicast address")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _check_name(value: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise _NotAllowedError(
            "must be 1 to 63 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )


def _normal_fqdn(value: Any) -> Any:
    return value.lower().removesuffix(".") if isinstance(value, str) else value


def _check_fqdn(value: str) -> None:
    labels = value.split(".") if isinstance(value, str) else []
    if len(labels) < 2 or len(value) > 253 or not all(map(_LABEL.match, labels)):
        raise _NotAllowedError(
            "must be a fully qualified DNS name such as pool01.contoso.com "
            "(the pool's single DNS name, resolving to the VIP)"
        )


def _check_scheduler(value: str) -> None:
    if not isinstance(value, str):
        raise _NotAllowedError("must be a scheduler name or package.module:ClassName")
    scheduler_class(value)


_NAME_RULE = _Rule(str, _check_name)
_ADDRESS_RULE: _Rule[str] = _Rule(_normal_address, _check_address)
_PROTOCOL_RULE: _Rule[PortProtocol] = _enum_rule(PortProtocol)
_PORT_RULE = _whole_rule(1, 65535)
_WEIGHT_RULE = _whole_rule(0, 65535)


@attrs.frozen
class Port:
    """A TCP port of the VIP, and what it carries.

    :ivar number: the port, on the VIP and on every server.
    :ivar protocol: what the port carries.
    """

    number: int = attrs.field(validator=_PORT_RULE)
    protocol: PortProtocol = attrs.field(
        default=PortProtocol.TCP, converter=PortProtocol, validator=_PROTOCOL_RULE
    )


#: The TCP ports of an OCS 2007 R2 Enterprise pool's VIP.
OCS_PORTS: tuple[Port, ...] = (
    Port(5060, PortProtocol.SIP),
    Port(5061, PortProtocol.SIPS),
    *(Port(n) for n in (135, 443, 444, 5065, 5069, 5071, 5072, 5073, 5074, 8404)),
)


def _normal_tls_name(value: Any) -> Any:
    return _normal_address(_normal_fqdn(value))


def _check_tls_name(value: str | None) -> None:
    if value is None:
        return
    with suppress(ValueError):
        ipaddress.ip_address(value)
        return
    labels = value.split(".") if isinstance(value, str) else []
    if not labels or len(value) > 253 or not all(map(_LABEL.match, labels)):
        raise _NotAllowedError(
            "must be the DNS name (such as fe01.contoso.com) or IP address "
            "the server's certificate is issued to"
        )


_TLS_NAME_RULE = _Rule(_normal_tls_name, _check_tls_name)

#: The rule of each ``[server:NAME]`` key, which is also the rule of its attribute.
_SERVER_RULES: dict[str, _Rule[Any]] = {
    "address": _ADDRESS_RULE,
    "weight": _WEIGHT_RULE,
    "tls_name": _TLS_NAME_RULE,
}


@attrs.frozen
class Server:
    """A server of the pool.

    :ivar name: its name in logs and in the admin API.
    :ivar address: its static IP address; each VIP port is relayed to the
        same port here.
    :ivar weight: its share of connections relative to the others' (0 to
        65535); 0 means it is never picked.
    :ivar tls_name: the name its certificate must carry, checked when
        ``[tls] mode = terminate`` re-encrypts to it; ``None`` checks its
        address.
    """

    name: str = attrs.field(validator=_NAME_RULE)
    address: str = attrs.field(
        converter=_normal_address, validator=_SERVER_RULES["address"]
    )
    weight: int = attrs.field(default=100, validator=_SERVER_RULES["weight"])
    tls_name: str | None = attrs.field(
        default=None, converter=_normal_tls_name, validator=_SERVER_RULES["tls_name"]
    )

    @property
    def certificate_name(self) -> str:
        """The name checked in its certificate: ``tls_name``, else its address."""
        return self.address if self.tls_name is None else self.tls_name


def _servers(servers: Iterable[Server]) -> tuple[Server, ...]:
    return tuple(servers)


def _ports(ports: Iterable[Port]) -> tuple[Port, ...]:
    return tuple(ports)


class MonitorType(enum.Enum):
    """How a server's health is checked."""

    #: A TCP connection established and closed: OCS 2007 R2's heartbeat.
    TCP = "tcp"
    #: A TLS handshake completed.
    TLS = "tls"
    #: A SIP OPTIONS answered with a final response (not 503).
    SIP_OPTIONS = "sip-options"
    #: An HTTPS GET of the monitor's ``url`` answered 2xx or 3xx.
    HTTPS = "https"


#: The heartbeat ports OCS 2007 R2 names (SIP/TLS, SIP/TCP, conferencing).
HEARTBEAT_PORTS = (5061, 5060, 444)


def _read_port_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in re.split(r"[\s,]+", text) if part)
    except ValueError:
        raise _NotAllowedError(_PORT_LIST) from None


def _check_port_list(ports: tuple[int, ...]) -> None:
    if len(set(ports)) != len(ports) or any(
        _PORT_RULE.explain(port) is not None for port in ports
    ):
        raise _NotAllowedError(_PORT_LIST)


_PORT_LIST = "must be distinct ports from 1 to 65535, separated by commas"


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not re.fullmatch(r"/[\x21-\x7e]*", url):
        raise _NotAllowedError("must be a path starting with /, without spaces")


#: The rule of each ``[monitor]`` key, which is also the rule of its attribute.
_MONITOR_RULES: dict[str, _Rule[Any]] = {
    "type": _enum_rule(MonitorType),
    "ports": _Rule(_read_port_list, _check_port_list),
    "interval": _number_rule(
        float,
        "must be a number of seconds, 1 or more",
        lambda s: math.isfinite(s) and s >= 1,
    ),
    "timeout": _seconds_rule(),
    "rise": _whole_rule(1, 1000),
    "fall": _whole_rule(1, 1000),
    "url": _Rule(str, _check_url),
}


def _port_list(ports: Iterable[int]) -> tuple[int, ...]:
    return tuple(ports)


@attrs.frozen
class Monitor:
    """How the pool's servers are health-checked.

    A server is down after ``fall`` failed checks in a row and never picked
    until ``rise`` checks in a row succeed.

    :ivar type: the kind of check.
    :ivar ports: the server ports checked; a server is up while every one
        answers.  Empty means those of :data:`HEARTBEAT_PORTS` the VIP
        exposes (see :attr:`Pool.heartbeat_ports`).
    :ivar interval: seconds between the checks of one server.
    :ivar timeout: seconds a check may take; no more than ``interval``.
    :ivar rise: successes in a row that bring a down server back.
    :ivar fall: failures in a row that take an up server down.
    :ivar url: the path an ``https`` check asks for.
    """

    type: MonitorType = attrs.field(
        default=MonitorType.TCP,
        converter=MonitorType,
        validator=_MONITOR_RULES["type"],
    )
    ports: tuple[int, ...] = attrs.field(
        default=(), converter=_port_list, validator=_MONITOR_RULES["ports"]
    )
    interval: float = attrs.field(
        default=5.0, converter=float, validator=_MONITOR_RULES["interval"]
    )
    timeout: float = attrs.field(
        default=2.0, converter=float, validator=_MONITOR_RULES["timeout"]
    )
    rise: int = attrs.field(default=2, validator=_MONITOR_RULES["rise"])
    fall: int = attrs.field(default=2, validator=_MONITOR_RULES["fall"])
    url: str = attrs.field(default="/", validator=_MONITOR_RULES["url"])


def _check_listen(text: str) -> None:
    allowed = (
        "must be a Twisted endpoint string: tcp:PORT[:interface=ADDRESS] or unix:PATH"
    )
    if not isinstance(text, str) or text.partition(":")[0] not in _ADMIN_ENDPOINTS:
        raise _NotAllowedError(allowed)
    # Twisted's own parser, imported here: the model needs it for this only.
    from twisted.internet.endpoints import serverFromString

    try:
        # Parsing builds the endpoint object only; nothing is bound.
        serverFromString(cast(Any, None), text)
    except (ValueError, TypeError, KeyError):
        raise _NotAllowedError(allowed) from None


def _check_token_file(path: str | None) -> None:
    if path is not None and (not isinstance(path, str) or not path.startswith("/")):
        raise _NotAllowedError("must be an absolute path to a file")


#: The endpoint types the admin interface may listen on.  TLS endpoints read
#: certificate files when parsed, and the interface is meant for loopback.
_ADMIN_ENDPOINTS = ("tcp", "tcp6", "unix")


def _read_names(text: str) -> tuple[str, ...]:
    return tuple(name.lower() for name in re.split(r"[\s,]+", text) if name)


def _check_names(names: tuple[str, ...]) -> None:
    allowed = "must be DNS names such as ocsbal.contoso.com, separated by commas"
    if not isinstance(names, tuple) or not all(
        isinstance(name, str)
        and len(name) <= 253
        and all(map(_LABEL.match, name.split(".")))
        for name in names
    ):
        raise _NotAllowedError(allowed)


#: The rule of each ``[admin]`` key, which is also the rule of its attribute.
_ADMIN_RULES: dict[str, _Rule[Any]] = {
    "listen": _Rule(str, _check_listen),
    "token_file": _Rule(str, _check_token_file),
    "hosts": _Rule(_read_names, _check_names),
}


def _names(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(n.lower() if isinstance(n, str) else n for n in names)


@attrs.frozen
class Admin:
    """Where the admin interface (JSON API, metrics, status page) listens.

    :ivar listen: a Twisted endpoint string; loopback by default.
    :ivar token_file: a file holding the token requests must carry
        (``Authorization: Bearer TOKEN``); ``None`` for no token.  It is read
        at start and at every reload, never logged.
    :ivar hosts: the names, besides ``localhost`` and the address it listens
        on, that requests may give as their ``Host``: any other is refused,
        so that a web page cannot reach the interface through a name of its
        own that resolves to it (DNS rebinding).
    """

    listen: str = attrs.field(
        default="tcp:9900:interface=127.0.0.1", validator=_ADMIN_RULES["listen"]
    )
    token_file: str | None = attrs.field(
        default=None, validator=_ADMIN_RULES["token_file"]
    )
    hosts: tuple[str, ...] = attrs.field(
        default=(), converter=_names, validator=_ADMIN_RULES["hosts"]
    )


class TLSMode(enum.Enum):
    """What ocsbal does with the TLS on ``sips`` ports."""

    #: The encrypted bytes are relayed untouched; nothing is inspected.
    PASSTHROUGH = "passthrough"
    #: Clients handshake with ocsbal, which opens TLS of its own to the
    #: server, verifies the server's certificate, and follows the SIP.
    TERMINATE = "terminate"


def _check_file(path: str | None) -> None:
    if path is not None and (not isinstance(path, str) or not path):
        raise _NotAllowedError("must be a file name")


def _handshake_timeout(value: float) -> bool:
    return math.isfinite(value) and 0 < value <= 300


#: The rule of each ``[tls]`` key, which is also the rule of its attribute.
_TLS_RULES: dict[str, _Rule[Any]] = {
    "mode": _enum_rule(TLSMode),
    "certificate": _Rule(str, _check_file),
    "trust": _Rule(str, _check_file),
    "client_certificate": _Rule(str, _check_file),
    "handshake_timeout": _number_rule(
        float,
        "must be a number of seconds greater than 0 and at most 300",
        _handshake_timeout,
    ),
}

#: The ``[tls]`` keys that name files.
_TLS_FILES = ("certificate", "trust", "client_certificate")


@attrs.frozen
class TLSSettings:
    """TLS on the pool's ``sips`` ports (OCS: 5061).

    The files are read, and the certificate checked against the pool FQDN,
    when the pool starts (:mod:`ocsbal._tls`); the model holds their names.

    :ivar mode: pass the encrypted bytes through, or terminate TLS here.
    :ivar certificate: with ``terminate``, a PEM file holding the pool's
        private key and certificate (and its chain), issued to the pool FQDN.
    :ivar trust: a PEM file of the certificate authorities that sign the
        servers' certificates; ``None`` trusts the system's authorities.
    :ivar client_certificate: a PEM file of a private key and certificate
        presented to the servers (mutual TLS); ``None`` presents none.
    :ivar handshake_timeout: seconds a client has to complete its
        handshake before it is disconnected.
    """

    mode: TLSMode = attrs.field(
        default=TLSMode.PASSTHROUGH, converter=TLSMode, validator=_TLS_RULES["mode"]
    )
    certificate: str | None = attrs.field(
        default=None, validator=_TLS_RULES["certificate"]
    )
    trust: str | None = attrs.field(default=None, validator=_TLS_RULES["trust"])
    client_certificate: str | None = attrs.field(
        default=None, validator=_TLS_RULES["client_certificate"]
    )
    handshake_timeout: float = attrs.field(
        default=10.0, converter=float, validator=_TLS_RULES["handshake_timeout"]
    )

    @property
    def terminate(self) -> bool:
        """Whether TLS is terminated here."""
        return self.mode is TLSMode.TERMINATE


_DSR = (
    "Direct Server Return is not supported by OCS 2007 R2 pools: the load "
    "balancer must see the servers' replies; use full or half"
)

#: The rule of each ``[pool]`` key, which is also the rule of its attribute.
_POOL_RULES: dict[str, _Rule[Any]] = {
    "name": _NAME_RULE,
    "fqdn": _Rule(_normal_fqdn, _check_fqdn),
    "vip": _ADDRESS_RULE,
    "kind": _enum_rule(PoolKind),
    "nat": _enum_rule(
        NatMode, dict.fromkeys(("dsr", "direct", "direct-server-return"), _DSR)
    ),
    "scheduler": _Rule(str, _check_scheduler),
    "idle_timeout": _seconds_rule(),
    "connect_timeout": _seconds_rule(),
    "retries": _whole_rule(0),
    "registration_grace": _seconds_rule(),
    "reap_expired": _Rule(_read_boolean, _check_boolean),
    "source": _ADDRESS_RULE,
    "freebind": _Rule(_read_boolean, _check_boolean),
}


@attrs.frozen
class Pool:
    """An OCS pool behind one VIP: everything ocsbal needs to balance it.

    Built by :func:`load` from an INI file or directly in code; either way it
    is checked on construction and raises :class:`ValueError` (from code) or
    :class:`ConfigError` (from a file) when anything is not allowed.

    :ivar name: the pool's name in logs.
    :ivar fqdn: the pool FQDN, the VIP's single DNS name.
    :ivar vip: the static virtual IP address every listener binds.
    :ivar servers: the pool's servers.
    :ivar ports: the VIP's ports; by default the OCS 2007 R2 list.
    :ivar kind: the OCS role of the pool; every kind but Edge is internal,
        and internal pools cannot use half-NAT.
    :ivar nat: how server connections are addressed.
    :ivar scheduler: a name from :data:`ocsbal.scheduling.SCHEDULERS` or
        ``package.module:ClassName``.
    :ivar idle_timeout: seconds without traffic after which a connection is
        closed; OCS 2007 R2 needs at least 1800.
    :ivar connect_timeout: seconds to wait for a server to accept.
    :ivar retries: how many other servers a connection tries when connecting
        to one fails.
    :ivar registration_grace: seconds a registration seen on a ``sip``
        port may go past its expiry without a refresh; until then its
        connection is never closed for idleness.
    :ivar reap_expired: whether a connection whose registration missed its
        refresh by the grace is closed (it is always reported).
    :ivar source: with full NAT, the address server connections (and
        health checks) come from; ``None`` lets the routing table choose.
    :ivar freebind: whether the listeners may bind the VIP before this host
        holds it (``IP_FREEBIND``), as a standby of a highly available pair
        does; otherwise a VIP that is not an address of this host stops the
        start.
    :ivar monitor: how servers are health-checked.
    :ivar tls: what is done with TLS on ``sips`` ports.
    :ivar admin: where the admin interface listens; ``None`` for none.
    """

    name: str = attrs.field(validator=_POOL_RULES["name"])
    fqdn: str = attrs.field(converter=_normal_fqdn, validator=_POOL_RULES["fqdn"])
    vip: str = attrs.field(converter=_normal_address, validator=_POOL_RULES["vip"])
    servers: tuple[Server, ...] = attrs.field(
        converter=_servers, validator=attrs.validators.min_len(1)
    )
    ports: tuple[Port, ...] = attrs.field(
        default=OCS_PORTS, converter=_ports, validator=attrs.validators.min_len(1)
    )
    kind: PoolKind = attrs.field(
        default=PoolKind.ENTERPRISE, converter=PoolKind, validator=_POOL_RULES["kind"]
    )
    nat: NatMode = attrs.field(
        default=NatMode.FULL, converter=NatMode, validator=_POOL_RULES["nat"]
    )
    scheduler: str = attrs.field(
        default="weighted-least-connections", validator=_POOL_RULES["scheduler"]
    )
    idle_timeout: float = attrs.field(
        default=1800.0, converter=float, validator=_POOL_RULES["idle_timeout"]
    )
    connect_timeout: float = attrs.field(
        default=5.0, converter=float, validator=_POOL_RULES["connect_timeout"]
    )
    retries: int = attrs.field(default=2, validator=_POOL_RULES["retries"])
    registration_grace: float = attrs.field(
        default=120.0, converter=float, validator=_POOL_RULES["registration_grace"]
    )
    reap_expired: bool = attrs.field(
        default=False, validator=_POOL_RULES["reap_expired"]
    )
    source: str | None = attrs.field(
        default=None,
        converter=_normal_address,
        validator=attrs.validators.optional(_POOL_RULES["source"]),
    )
    freebind: bool = attrs.field(default=False, validator=_POOL_RULES["freebind"])
    monitor: Monitor = attrs.field(
        default=Monitor(), validator=attrs.validators.instance_of(Monitor)
    )
    tls: TLSSettings = attrs.field(
        default=TLSSettings(), validator=attrs.validators.instance_of(TLSSettings)
    )
    admin: Admin | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(Admin)),
    )

    @property
    def heartbeat_ports(self) -> tuple[int, ...]:
        """The server ports the monitor checks.

        The monitor's own list if it has one, else the OCS heartbeat ports
        (5061, 5060, 444) the VIP exposes, else the VIP's first port.
        """
        exposed = {port.number for port in self.ports}
        return (
            self.monitor.ports
            or tuple(p for p in HEARTBEAT_PORTS if p in exposed)
            or (self.ports[0].number,)
        )

    def __attrs_post_init__(self) -> None:
        problems = [Problem(None, *broken) for broken in relations(self)]
        if problems:
            raise ConfigError(problems)


class _Related(Protocol):
    """What :func:`relations` reads: a :class:`Pool`, or a file's draft of one.

    In a draft, a value that was refused is ``None``.
    """

    @property
    def vip(self) -> str | None: ...
    @property
    def kind(self) -> PoolKind | None: ...
    @property
    def nat(self) -> NatMode | None: ...
    @property
    def source(self) -> str | None: ...
    @property
    def monitor(self) -> Monitor | None: ...
    @property
    def tls(self) -> TLSSettings | None: ...
    @property
    def ports(self) -> Sequence[Port]: ...
    @property
    def servers(self) -> Sequence[Server]: ...


def relations(
    pool: _Related,
) -> Iterator[tuple[str, str | None, str | None, str]]:
    """Check what fields must be true of each other; yield each broken rule.

    Each is ``(section, key, value, message)``, placed where an operator
    would fix it.  A draft's refused values are ``None`` and not checked.
    """
    monitor = pool.monitor
    if (
        monitor is not None
        and monitor.url != "/"
        and monitor.type is not MonitorType.HTTPS
    ):
        yield (
            "monitor",
            "url",
            monitor.url,
            "is only used by type = https",
        )
    if monitor is not None and monitor.timeout > monitor.interval:
        yield (
            "monitor",
            "timeout",
            _text(monitor.timeout),
            f"must not exceed the interval ({_text(monitor.interval)} s): a "
            "check ends before the next begins",
        )
    if pool.tls is not None:
        yield from _tls_relations(pool.tls)
    source = pool.source
    if source is not None and pool.nat is NatMode.HALF:
        yield (
            "pool",
            "source",
            source,
            "is only used by nat = full: with half-NAT, server connections come "
            "from the client's own address",
        )
    if pool.kind is not None and pool.kind.internal and pool.nat is NatMode.HALF:
        yield (
            "pool",
            "nat",
            NatMode.HALF.value,
            f"half-NAT is refused for {pool.kind.value} pools: their servers "
            "connect to their own VIP, which half-NAT cannot relay; use full "
            "(half is allowed for edge pools)",
        )
    numbers: set[int] = set()
    for port in pool.ports:
        if port.number in numbers:
            yield "ports", str(port.number), port.protocol.value, "listed twice"
        numbers.add(port.number)
    owners: dict[str, str] = {}
    names: set[str] = set()
    for server in pool.servers:
        section = f"server:{server.name}"
        if server.name in names:
            yield section, None, None, "a server of that name is already listed"
        names.add(server.name)
        if server.address == pool.vip:
            yield (
                section,
                "address",
                server.address,
                "is the VIP; a server needs its own address",
            )
        elif server.address in owners:
            yield (
                section,
                "address",
                server.address,
                f"is already server {owners[server.address]}'s address; each "
                "server needs its own",
            )
        owners.setdefault(server.address, server.name)


def _tls_relations(
    tls: TLSSettings,
) -> Iterator[tuple[str, str | None, str | None, str]]:
    if tls.terminate and tls.certificate is None:
        yield (
            "tls",
            "certificate",
            "",
            "is required with mode = terminate: the pool's key and certificate, "
            "which clients verify",
        )
    if not tls.terminate:
        for key in _TLS_FILES:
            if getattr(tls, key) is not None:
                yield "tls", key, getattr(tls, key), "is only used by mode = terminate"


@attrs.frozen
class Problem:
    """One thing wrong with a configuration.

    Its string form is the line an operator reads, for example
    ``pool.ini: [pool] retries = -1: must be a whole number, 0 or more``;
    a pool built in code has no file, and its lines start at the section.
    """

    file: str | None
    section: str | None
    key: str | None
    value: str | None
    message: str

    def __str__(self) -> str:
        where = [] if self.file is None else [self.file]
        if self.section is not None:
            place = f"[{self.section}]"
            if self.key is not None:
                place += f" {self.key} = {self.value}"
            where.append(place)
        return ": ".join([*where, self.message])


class ConfigError(ValueError):
    """A configuration was refused; :attr:`problems` says why, all at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(map(_text, value))
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
