"""What the admin interface reports: the pool at run time as plain data.

Each function turns run-time objects into JSON-ready dictionaries, read by
the JSON API, the status page, ``/metrics`` and ``ocsbal ctl`` alike, so all
say the same thing in the same words.  What is counted per connection comes
as :func:`figures`: one process's, or those of every worker added up.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ocsbal._endpoints import host_port
from ocsbal._pool import AdminState
from ocsbal._sweep import closing_time

if TYPE_CHECKING:
    from ocsbal._model import Monitor
    from ocsbal._pool import Backend, RunningPool
    from ocsbal._relay import Relay, Splice


def figures(relay: Relay, connections: bool = False) -> dict[str, Any]:
    """What this process counts of its pool, as JSON-ready data.

    Per server (``servers``, and ``leaving`` for those removed that still
    have connections), per VIP port (``ports``) and of the SIP (``sip``);
    with ``connections``, every open connection too.  A worker process sends
    its figures to its control process, which adds them up with
    :func:`add_figures`; the reports below read them either way.
    """
    active = relay.active_by_port()
    tally = relay.sip
    held, quiet = _registrations(relay)
    return {
        "servers": {
            b.name: _counts(b, held[b], quiet[b])
            for b in relay.servers.backends.values()
        },
        "leaving": {
            b.name: _counts(b, held[b], quiet[b]) for b in relay.servers.leaving
        },
        "ports": {
            str(port.number): {
                "active": active[port.number],
                "accepted": relay.accepted[port.number],
                "rejected": relay.rejected[port.number],
            }
            for port in relay.pool.ports
        },
        "limited": dict(relay.limited),
        "accept_pauses": relay.admission.pauses,
        "sip": {
            "requests": dict(tally.requests),
            "responses": dict(tally.responses),
            "keepalives": dict(tally.keepalives),
            "gave_up": dict(tally.gave_up),
        },
        "connections": connections_report(relay) if connections else [],
    }


def _counts(backend: Backend, registrations: int, quiet: int) -> dict[str, Any]:
    return {
        "active": backend.here,
        "total": backend.total,
        "sent": backend.sent,
        "received": backend.received,
        "registrations": registrations,
        "connect_failures": dict(backend.connect_failures),
        "moved": backend.moved,
        "quiet": quiet,
    }


def _registrations(relay: Relay) -> tuple[Counter[Backend], Counter[Backend]]:
    """The SIP registrations each server holds, and its quiet connections.

    Each address of record registered over a connection of this process and
    not expired yet counts once for the connection's server; a connection
    counts as quiet as :attr:`ocsbal.sip.Registrations.quiet` says.
    """
    now = relay.reactor.seconds()
    held: Counter[Backend] = Counter()
    quiet: Counter[Backend] = Counter()
    for splice in relay.splices:
        sip, backend = splice.sip, splice.backend
        if sip is not None and backend is not None:
            held[backend] += sum(expiry > now for expiry in sip.bindings.values())
            quiet[backend] += sip.quiet
    return held, quiet


def add_figures(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The figures of several processes as those of one.

    Counts are added; connections are listed together, oldest first.
    """
    total: dict[str, Any] = {}
    for part in parts:
        total = _add(total, part)
    connections = total.get("connections", [])
    connections.sort(key=lambda c: c["age"], reverse=True)
    return total


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) if k in a else b[k] for k in b} | {
            k: v for k, v in a.items() if k not in b
        }
    return a + b


def server_report(
    backend: Backend,
    monitor: Monitor,
    counted: dict[str, int] | None = None,
    overrides: dict[str, Any] | None = None,
    move: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One server: configuration, state, health (and since when) and load.

    :param monitor: the ``[monitor]`` in force, whose ``rise`` and ``fall``
        the health's streak is counted against.
    :param counted: its figures (see :func:`figures`); none: it has had no
        connection yet.
    :param overrides: what it runs with that the pool's file does not say
        (:meth:`ocsbal._overrides.Overrides.differences`).
    :param move: its move under way, if it is drained with ``move_within``.
    """
    counts = counted or {
        "active": 0,
        "total": 0,
        "sent": 0,
        "received": 0,
        "registrations": 0,
    }
    return {
        "name": backend.name,
        "address": backend.server.address,
        "weight": backend.server.weight,
        "effective_weight": backend.weight,
        "maxconn": backend.server.maxconn,
        "state": backend.state.value,
        "removed": backend.removed,
        **_health(backend, monitor),
        "since": round(backend.health.since, 3),
        "last_check": backend.health.last,
        "active": counts["active"],
        "total": counts["total"],
        "bytes_to_server": counts["sent"],
        "bytes_from_server": counts["received"],
        "registrations": counts["registrations"],
        "quiet": counts.get("quiet", 0),
        "moved": counts.get("moved", 0),
        "move": move,
        "overrides": overrides or {},
    }


def _health(backend: Backend, monitor: Monitor) -> dict[str, Any]:
    """A server's health, as the API, ``ocsbal ctl`` and the status page say it.

    ``health`` is ``up``, ``down``, or ``maint``: in maintenance, not
    checked.  ``streak`` is :attr:`~ocsbal.health.HealthState.streak`, and
    ``health_detail`` says it against ``rise`` or ``fall`` ("1 of 2 checks
    passed"), or that the server is not checked; "" when there is nothing
    to add.
    """
    health = backend.health
    if backend.state is AdminState.MAINT:
        return {"health": "maint", "streak": 0, "health_detail": "not checked"}
    detail = ""
    if backend.removed:
        detail = "no longer checked"
    elif health.streak:
        needed, result = (
            (monitor.fall, "failed") if health.up else (monitor.rise, "passed")
        )
        detail = f"{health.streak} of {needed} checks {result}"
    return {
        "health": "up" if health.up else "down",
        "streak": health.streak,
        "health_detail": detail,
    }


def servers_report(
    servers: RunningPool,
    counted: dict[str, Any],
    overridden: Callable[[str], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every server, in configuration order, then those being removed.

    :param overridden: what a server, by name, runs with that the pool's
        file does not say.
    """
    leaving = sorted(servers.leaving, key=lambda b: b.name)
    monitor = servers.pool.monitor
    changes = overridden or (lambda _name: {})
    return [
        *(
            server_report(b, monitor, counted["servers"].get(b.name), changes(b.name))
            for b in servers.backends.values()
        ),
        *(server_report(b, monitor, counted["leaving"].get(b.name)) for b in leaving),
    ]


def pool_report(servers: RunningPool, counted: dict[str, Any]) -> dict[str, Any]:
    """The pool's settings, its listeners and its totals."""
    pool = servers.pool
    monitor = pool.monitor
    backends = servers.backends.values()
    ports = counted["ports"]
    listeners = [
        {
            "port": port.number,
            "protocol": port.protocol.value,
            **ports.get(str(port.number), {"active": 0, "accepted": 0, "rejected": 0}),
        }
        for port in pool.ports
    ]
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
        "source": list(pool.source),
        "slowstart": pool.slowstart,
        "maxconn": pool.maxconn,
        "limits": {
            "per_source_connections": pool.limits.per_source_connections,
            "per_source_rate": pool.limits.per_source_rate,
        },
        "monitor": {
            "type": monitor.type.value,
            "ports": list(pool.heartbeat_ports),
            "interval": monitor.interval,
            "timeout": monitor.timeout,
            "rise": monitor.rise,
            "fall": monitor.fall,
        },
        "listeners": listeners,
        "totals": {
            "servers": len(servers.backends),
            "up": sum(b.health.up for b in backends),
            "ready": sum(b.pickable for b in backends),
            **{
                key: sum(p[key] for p in ports.values())
                for key in ("active", "accepted", "rejected")
            },
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
        "client": host_port(splice.peer),
        "port": splice.port.number,
        "protocol": splice.port.protocol.value,
        "server": None if splice.backend is None else splice.backend.name,
        "age": round(now - splice.started, 3),
        "idle": round(now - splice.last_activity, 3),
        "bytes_from_client": splice.upstream,
        "bytes_from_server": splice.downstream,
        "closes_in": round(closes_at - now, 3),
        "closes_because": closes_because,
        "quiet": splice.sip is not None and splice.sip.quiet,
    }
    sip = splice.sip
    if sip is not None:
        report["sip"] = {
            "registered": {
                aor: round(expiry - now, 3) for aor, expiry in sip.bindings.items()
            },
            "keepalives": sip.keepalives,
            "transactions": sip.transactions,
            "dialogs": sip.dialogs,
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
