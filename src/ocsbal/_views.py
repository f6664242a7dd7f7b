"""How ``ocsbal ctl`` shows the admin API's answers: aligned tables."""

from __future__ import annotations

import time
from typing import Any

__all__ = [
    "changed",
    "show_connections",
    "show_pool",
    "show_pools",
    "show_servers",
    "show_workers",
]


def _table(rows: list[list[object]], head: list[str]) -> str:
    cells = [head, *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _health(server: dict[str, Any]) -> str:
    """``down (1 of 2 checks passed)``, ``maint (not checked)``, ``up``."""
    detail = server["health_detail"]
    return f"{server['health']} ({detail})" if detail else server["health"]


def changed(server: dict[str, Any]) -> str:
    """What the operator changed of the file: ``weight 50 (file 100), added``."""
    changes = server.get("overrides", {})
    said = [
        f"{key} {v['running']} (file {v['file']})"
        for key, v in changes.items()
        if isinstance(v, dict) and v["file"] is not None
    ]
    said += [key for key, v in changes.items() if v is True]
    said += [
        f"{key} {v['running']}"
        for key, v in changes.items()
        if isinstance(v, dict) and v["file"] is None
    ]
    return ", ".join(said) or "-"


def show_servers(servers: list[dict[str, Any]]) -> str:
    """The servers as a table.

    ``CHANGED`` is what the operator changed of the pool's file, which a
    reload or a restart keeps until ``ocsbal ctl forget``.
    """
    head = [
        "NAME",
        "ADDRESS",
        "WEIGHT",
        "STATE",
        "HEALTH",
        "ACTIVE",
        "TOTAL",
        "LAST CHECK",
        "CHANGED",
    ]
    rows: list[list[object]] = [
        [
            s["name"],
            s["address"],
            s["weight"],
            "removed" if s["removed"] else s["state"],
            _health(s),
            s["active"],
            s["total"],
            s["last_check"],
            changed(s),
        ]
        for s in servers
    ]
    return _table(rows, head)


def show_pool(pool: dict[str, Any]) -> str:
    """The pool's settings and listeners."""
    totals = pool["totals"]
    listeners = _table(
        [
            [x["port"], x["protocol"], x["active"], x["accepted"], x["rejected"]]
            for x in pool["listeners"]
        ],
        ["PORT", "PROTOCOL", "OPEN", "ACCEPTED", "REJECTED"],
    )
    return (
        f"pool {pool['name']} ({pool['fqdn']}) on {pool['vip']}: {pool['kind']}, "
        f"{pool['nat']} NAT, {pool['scheduler']}\n"
        f"servers up {totals['up']}/{totals['servers']}, taking connections "
        f"{totals['ready']}, open connections {totals['active']}\n\n{listeners}"
    )


def show_connections(connections: list[dict[str, Any]]) -> str:
    """The open connections as a table.

    ``CLOSES IN`` is when the idle sweep closes it if nothing more happens,
    and why then; ``REGISTERED``, on ``sip`` ports, each address of record
    registered over it, with the seconds left before it expires.
    """
    rows: list[list[object]] = [
        [
            c["client"],
            c["port"],
            c["server"] or "-",
            f"{c['age']:.0f}s",
            f"{c['idle']:.0f}s",
            f"{c['closes_in']:.0f}s ({c['closes_because']})",
            c["bytes_from_client"],
            c["bytes_from_server"],
            _registered(c.get("sip")),
        ]
        for c in connections
    ]
    head = ["CLIENT", "PORT", "SERVER", "AGE", "IDLE", "CLOSES IN"]
    return _table(rows, [*head, "FROM CLIENT", "FROM SERVER", "REGISTERED"])


def _registered(sip: dict[str, Any] | None) -> str:
    registered = {} if sip is None else sip["registered"]
    return ", ".join(f"{aor} ({left:.0f}s)" for aor, left in registered.items()) or "-"


def show_workers(workers: list[dict[str, Any]]) -> str:
    """The processes that relay, as a table."""
    rows: list[list[object]] = [
        [
            w["worker"],
            w["pid"],
            w["generation"],
            w["state"],
            w["connections"],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w["started"])),
            w["restarts"],
        ]
        for w in workers
    ]
    head = ["WORKER", "PID", "GENERATION", "STATE", "CONNECTIONS", "STARTED"]
    return _table(rows, [*head, "RESTARTS"])


def show_pools(pools: list[dict[str, Any]]) -> str:
    """The pools a daemon serves, as a table (``/api/pools``)."""
    rows: list[list[object]] = [
        [
            p["name"],
            p["fqdn"],
            p["vip"],
            p["kind"],
            ", ".join(map(str, p["ports"])),
            p["servers"],
        ]
        for p in pools
    ]
    return _table(rows, ["NAME", "FQDN", "VIP", "KIND", "PORTS", "SERVERS"])
