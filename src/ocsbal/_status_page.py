"""The admin interface's status page: the pool at a glance, as HTML.

Rendered with :mod:`twisted.web.template` from the same reports as the JSON
API, so everything from the pool is escaped by the template.  The page is
self-contained (inline CSS, no script) and reloads itself.
"""

from __future__ import annotations

from typing import Any

from twisted.web.template import Tag, flattenString, tags

#: Inline, so the page needs nothing but itself.
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328;
       background: #f6f8fa; }
h1 { font-size: 22px; margin: 0 0 4px; }
.sub { color: #59636e; margin-bottom: 16px; }
.totals { display: flex; gap: 12px; margin-bottom: 20px; }
.total { background: #fff; border: 1px solid #d1d9e0; border-radius: 6px;
         padding: 8px 14px; }
.total b { display: block; font-size: 20px; }
table { border-collapse: collapse; background: #fff; margin-bottom: 20px;
        border: 1px solid #d1d9e0; min-width: 720px; }
th, td { padding: 6px 12px; text-align: left; border-bottom: 1px solid #e6eaef; }
th { background: #eef1f4; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 10px;
         color: #fff; font-weight: 600; }
.badge.up { background: #1a7f37; }
.badge.down { background: #cf222e; }
.badge.maint { background: #59636e; }
.detail { color: #59636e; margin-left: 6px; }
.state-ready { color: #1a7f37; }
.state-drain { color: #9a6700; font-weight: 600; }
.state-maint, .state-removed { color: #59636e; font-weight: 600; }
.track { width: 160px; height: 12px; background: #eef1f4; border-radius: 3px;
         display: inline-block; vertical-align: middle; margin-right: 8px; }
.bar { display: block; height: 12px; background: #0969da; border-radius: 3px; }
footer { color: #59636e; font-size: 12px; }
"""

_UNITS = ("B", "kB", "MB", "GB", "TB")


def human_bytes(count: int) -> str:
    """``count`` bytes in the largest decimal unit that keeps it at 1 or more."""
    value = float(count)
    for unit in _UNITS[:-1]:
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_UNITS[-1]}"


def _page(pool: dict[str, Any], servers: list[dict[str, Any]], refresh: int) -> Tag:
    title = f"ocsbal: {pool['name']}"
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(content=str(refresh), **{"http-equiv": "refresh"}),
            tags.title(title),
            tags.style(_STYLE),
        ),
        tags.body(
            tags.h1(title),
            tags.div(class_="sub")(
                f"{pool['fqdn']} on {pool['vip']} · {pool['kind']} pool · "
                f"{pool['nat']} NAT · {pool['scheduler']}"
            ),
            _totals(pool["totals"]),
            tags.h2("Servers"),
            _servers(servers),
            tags.h2("Listeners"),
            _listeners(pool["listeners"]),
            tags.footer(f"This page refreshes every {refresh} s."),
        ),
    )


def _table(head: list[str], rows: list[Tag]) -> Tag:
    return tags.table(tags.tr([tags.th(h) for h in head]), rows)


def _totals(totals: dict[str, int]) -> Tag:
    shown = [
        ("servers up", f"{totals['up']} / {totals['servers']}"),
        ("taking connections", str(totals["ready"])),
        ("open connections", str(totals["active"])),
        ("accepted", str(totals["accepted"])),
        ("rejected", str(totals["rejected"])),
    ]
    return tags.div(class_="totals")(
        [tags.div(class_="total")(tags.b(value), label) for label, value in shown]
    )


def _servers(servers: list[dict[str, Any]]) -> Tag:
    busiest = max((s["active"] for s in servers), default=0)
    head = [
        "server",
        "address",
        "health",
        "state",
        "weight",
        "connections",
        "total",
        "to server",
        "from server",
        "last check",
    ]
    return _table(head, [_server(server, busiest) for server in servers])


def _server(server: dict[str, Any], busiest: int) -> Tag:
    health, detail = server["health"], server["health_detail"]
    state = "removed" if server["removed"] else server["state"]
    width = 100 * server["active"] // busiest if busiest else 0
    row = tags.tr(class_=f"server {health} {state}", id=f"server-{server['name']}")
    return row(
        tags.td(tags.b(server["name"])),
        tags.td(server["address"]),
        tags.td(
            tags.span(class_=f"badge {health}")(health),
            tags.span(class_="detail")(detail) if detail else "",
        ),
        tags.td(class_=f"state-{state}")(state),
        tags.td(class_="n")(str(server["weight"])),
        tags.td(
            tags.span(class_="track")(
                tags.span(class_="bar", style=f"width: {width}%")
            ),
            str(server["active"]),
        ),
        tags.td(class_="n")(str(server["total"])),
        tags.td(class_="n")(human_bytes(server["bytes_to_server"])),
        tags.td(class_="n")(human_bytes(server["bytes_from_server"])),
        tags.td(server["last_check"]),
    )


def _listeners(listeners: list[dict[str, Any]]) -> Tag:
    rows = [
        tags.tr(
            tags.td(str(listener["port"])),
            tags.td(listener["protocol"]),
            *(
                tags.td(class_="n")(str(listener[key]))
                for key in ("active", "accepted", "rejected")
            ),
        )
        for listener in listeners
    ]
    return _table(["port", "protocol", "open", "accepted", "rejected"], rows)


def render_status_page(
    pool: dict[str, Any], servers: list[dict[str, Any]], refresh: int = 5
) -> bytes:
    """The status page for a pool report and its servers' reports.

    :param refresh: seconds after which the browser reloads the page.
    """
    results: list[bytes] = []
    failures: list[Any] = []
    # Nothing on the page is deferred, so flattening completes at once.
    flattenString(None, _page(pool, servers, refresh)).addCallbacks(
        results.append, failures.append
    )
    if failures:
        failures[0].raiseException()
    return b"<!DOCTYPE html>\n" + results[0]
