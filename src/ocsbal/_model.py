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

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import attrs

from ocsbal._rules import (
    _ADDRESS_RULE,
    _NAME_RULE,
    _PORT_RULE,
    _WEIGHT_RULE,
    ConfigError,
    MonitorType,
    NatMode,
    PoolKind,
    PortProtocol,
    Problem,
    TLSMode,
    _check_boolean,
    _check_fqdn,
    _check_port_list,
    _check_scheduler,
    _check_sources,
    _check_tls_name,
    _check_url,
    _check_workers,
    _enum_rule,
    _normal_address,
    _normal_fqdn,
    _normal_sources,
    _normal_tls_name,
    _number_rule,
    _ramp_rule,
    _read_boolean,
    _read_port_list,
    _read_workers,
    _Rule,
    _seconds_rule,
    _text,
    _whole_rule,
)
from ocsbal._sections import _TLS_FILES, Admin, Limits, LogSettings, TLSSettings

__all__ = [
    "HEARTBEAT_PORTS",
    "OCS_PORTS",
    "Admin",
    "ConfigError",
    "Limits",
    "LogSettings",
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


_PROTOCOL_RULE: _Rule[PortProtocol] = _enum_rule(PortProtocol)


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


_TLS_NAME_RULE = _Rule(_normal_tls_name, _check_tls_name)

#: The rule of each ``[server:NAME]`` key, which is also the rule of its attribute.
_SERVER_RULES: dict[str, _Rule[Any]] = {
    "address": _ADDRESS_RULE,
    "weight": _WEIGHT_RULE,
    "tls_name": _TLS_NAME_RULE,
    "slowstart": _ramp_rule(),
    "maxconn": _whole_rule(0),
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
    :ivar slowstart: seconds over which its weight ramps up to its full
        weight each time it comes up; 0 for none, ``None`` for the pool's
        :attr:`Pool.slowstart`.
    :ivar maxconn: the most connections it takes at once; 0 for no limit.
    """

    name: str = attrs.field(validator=_NAME_RULE)
    address: str = attrs.field(
        converter=_normal_address, validator=_SERVER_RULES["address"]
    )
    weight: int = attrs.field(default=100, validator=_SERVER_RULES["weight"])
    tls_name: str | None = attrs.field(
        default=None, converter=_normal_tls_name, validator=_SERVER_RULES["tls_name"]
    )
    slowstart: float | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(float),
        validator=attrs.validators.optional(_SERVER_RULES["slowstart"]),
    )
    maxconn: int = attrs.field(default=0, validator=_SERVER_RULES["maxconn"])

    @property
    def certificate_name(self) -> str:
        """The name checked in its certificate: ``tls_name``, else its address."""
        return self.address if self.tls_name is None else self.tls_name


def _servers(servers: Iterable[Server]) -> tuple[Server, ...]:
    return tuple(servers)


def _ports(ports: Iterable[Port]) -> tuple[Port, ...]:
    return tuple(ports)


#: The heartbeat ports OCS 2007 R2 names (SIP/TLS, SIP/TCP, conferencing).
HEARTBEAT_PORTS = (5061, 5060, 444)


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
    "source": _Rule(_normal_sources, _check_sources),
    "freebind": _Rule(_read_boolean, _check_boolean),
    "workers": _Rule(_read_workers, _check_workers),
    "old_workers_timeout": _seconds_rule(),
    "slowstart": _ramp_rule(),
    "maxconn": _whole_rule(0),
    "rebalance": _Rule(_read_boolean, _check_boolean),
    "rebalance_rate": _number_rule(
        float,
        "must be a number of connections a second, greater than 0",
        lambda r: math.isfinite(r) and r > 0,
    ),
    "rebalance_tolerance": _number_rule(
        float, "must be a percentage from 0 to 100", lambda p: 0 <= p <= 100
    ),
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
    :ivar source: with full NAT, the addresses server connections come
        from, spread over them (one address carries some 28,000 connections
        to one server port); health checks come from the first.  Empty lets
        the routing table choose.
    :ivar freebind: whether the listeners may bind the VIP before this host
        holds it (``IP_FREEBIND``), as a standby of a highly available pair
        does; otherwise a VIP that is not an address of this host stops the
        start.
    :ivar workers: how many processes ``twistd ocsbal`` relays with, each
        taking its share of every VIP port; ``None`` (``auto``) for one per
        core.  An embedded :class:`~ocsbal.PoolService` is one process.
    :ivar old_workers_timeout: seconds the workers a restart replaced may
        keep their connections before those are closed.
    :ivar slowstart: seconds over which a server's weight ramps up to its
        full weight when it comes up (after being down, added, or in
        maintenance), unless the server sets its own; 0 for none.
    :ivar maxconn: the most connections the pool takes at once, over all
        its servers; 0 for no limit.
    :ivar rebalance: whether quiet connections are moved off servers above
        their weighted share while one is below it by more than
        ``rebalance_tolerance`` percent (:mod:`ocsbal._moving`).
    :ivar rebalance_rate: the connections a second a rebalance moves.
    :ivar rebalance_tolerance: how far below its share, in percent, a server
        may be before a rebalance begins.
    :ivar monitor: how servers are health-checked.
    :ivar tls: what is done with TLS on ``sips`` ports.
    :ivar admin: where the admin interface listens; ``None`` for none.
    :ivar limits: what one client address may take.
    :ivar log: what the log says beyond problems and changes.
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
    source: tuple[str, ...] = attrs.field(
        default=(), converter=_normal_sources, validator=_POOL_RULES["source"]
    )
    freebind: bool = attrs.field(default=False, validator=_POOL_RULES["freebind"])
    workers: int | None = attrs.field(default=None, validator=_POOL_RULES["workers"])
    old_workers_timeout: float = attrs.field(
        default=3600.0, converter=float, validator=_POOL_RULES["old_workers_timeout"]
    )
    slowstart: float = attrs.field(
        default=0.0, converter=float, validator=_POOL_RULES["slowstart"]
    )
    maxconn: int = attrs.field(default=0, validator=_POOL_RULES["maxconn"])
    rebalance: bool = attrs.field(default=False, validator=_POOL_RULES["rebalance"])
    rebalance_rate: float = attrs.field(
        default=1.0, converter=float, validator=_POOL_RULES["rebalance_rate"]
    )
    rebalance_tolerance: float = attrs.field(
        default=10.0, converter=float, validator=_POOL_RULES["rebalance_tolerance"]
    )
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
    limits: Limits = attrs.field(
        default=Limits(), validator=attrs.validators.instance_of(Limits)
    )
    log: LogSettings = attrs.field(
        default=LogSettings(), validator=attrs.validators.instance_of(LogSettings)
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


class _MonitorRelated(Protocol):
    """What :func:`relations` reads of a :class:`Monitor`, or of a draft's.

    In a draft, a value that was refused is ``None``.
    """

    @property
    def type(self) -> MonitorType | None: ...
    @property
    def url(self) -> str | None: ...
    @property
    def interval(self) -> float | None: ...
    @property
    def timeout(self) -> float | None: ...


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
    def source(self) -> tuple[str, ...] | None: ...
    @property
    def monitor(self) -> _MonitorRelated | None: ...
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
        and monitor.url not in (None, "/")
        and monitor.type not in (None, MonitorType.HTTPS)
    ):
        yield (
            "monitor",
            "url",
            monitor.url,
            "is only used by type = https",
        )
    if (
        monitor is not None
        and monitor.timeout is not None
        and monitor.interval is not None
        and monitor.timeout > monitor.interval
    ):
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
    if source and pool.nat is NatMode.HALF:
        yield (
            "pool",
            "source",
            _text(source),
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
        if not tls.inspect:
            yield "tls", "inspect", "no", "is only used by mode = terminate"
