"""What the admin interface reports: the pool at run time as plain data.

Each function turns run-time objects into JSON-ready dictionaries, read by
the JSON API, the status page and ``ocsbal ctl`` alike, so all three say
the same thing in the same words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address

from ocsbal._sweep import closing_time

if TYPE_CHECKING:
    from ocsbal._pool import Backend
    from ocsbal._relay import Relay, Splice


def server_report(backend: Backend) -> dict[str, Any]:
    """One server: configuration, state, health and load."""
    return {
        "name": backend.name,
        "address": backend.server.address,
        "weight": backend.weight,
        "state": backend.state.value,
        "removed": backend.removed,
        "health": "up" if backend.health.up else "down",
        "last_check": backend.health.last,
        "active": backend.active,
        "total": backend.total,
        "bytes_to_server": backend.sent,
        "bytes_from_server": backend.received,
    }


def servers_report(relay: Relay) -> list[dict[str, Any]]:
    """Every server, in configuration order, then those being removed."""
    servers = relay.servers
    leaving = sorted(servers.leaving, key=lambda b: b.name)
    return [server_report(b) for b in [*servers.backends.values(), *leaving]]


def pool_report(relay: Relay) -> dict[str, Any]:
    """The pool's settings, its listeners and its totals."""
    pool = relay.pool
    monitor = pool.monitor
    active = relay.active_by_port()
    backends = relay.servers.backends.values()
    return {
        "name": pool.name,
        "fqdn": pool.fqdn,
        "vip": pool.vip,
        "kind": pool.kind.value,
        "nat": pool.nat.value,
        "scheduler": pool.scheduler,
        "idle_timeout": pool.idle_timeout,
        "connect_timeout": pool.connect_timeout,
        "retries": pool.retries,
        "monitor": {
            "type": monitor.type.value,
            "ports": list(pool.heartbeat_ports),
            "interval": monitor.interval,
            "timeout": monitor.timeout,
            "rise": monitor.rise,
            "fall": monitor.fall,
        },
        "listeners": [
            {
                "port": port.number,
                "protocol": port.protocol.value,
                "active": active[port.number],
                "accepted": relay.accepted[port.number],
                "rejected": relay.rejected[port.number],
            }
            for port in pool.ports
        ],
        "totals": {
            "servers": len(relay.servers.backends),
            "up": sum(b.health.up for b in backends),
            "ready": sum(b.pickable for b in backends),
            "active": len(relay.splices),
            "accepted": relay.accepted.total(),
            "rejected": relay.rejected.total(),
        },
    }


def connection_report(splice: Splice, now: float) -> dict[str, Any]:
    """One client connection, ``now`` being the clock's time.

    It says in how many seconds the idle sweep will close it if nothing
    more happens, and why then (see :func:`ocsbal._sweep.closing_time`).  On a
    ``sip`` port it also says what the SIP told: registered addresses of
    record and when they expire, keep-alives, the last message, and whether
    inspection gave up.
    """
    closes_at, closes_because = closing_time(splice)
    report: dict[str, Any] = {
        "client": _address(splice.peer),
        "port": splice.port.number,
        "protocol": splice.port.protocol.value,
        "server": None if splice.backend is None else splice.backend.name,
        "age": round(now - splice.started, 3),
        "idle": round(now - splice.last_activity, 3),
        "bytes_from_client": splice.upstream,
        "bytes_from_server": splice.downstream,
        "closes_in": round(closes_at - now, 3),
        "closes_because": closes_because,
    }
    sip = splice.sip
    if sip is not None:
        report["sip"] = {
            "registered": {
                aor: round(expiry - now, 3) for aor, expiry in sip.bindings.items()
            },
            "keepalives": sip.keepalives,
            "last_message": sip.last_message,
            "inspection": f"gave up: {sip.gave_up}" if sip.gave_up else "on",
            "missed_refresh": sip.missed_refresh(
                now, splice.relay.pool.registration_grace
            ),
        }
    return report


def connections_report(relay: Relay) -> list[dict[str, Any]]:
    """Every open client connection, oldest first."""
    now = relay.reactor.seconds()
    splices = sorted(relay.splices, key=lambda s: s.started)
    return [connection_report(s, now) for s in splices]


def _address(address: object) -> str:
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    return str(address)
