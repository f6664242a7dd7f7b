"""The admin interface's status page: the pool at a glance, as HTML.

Rendered with :mod:`twisted.web.template` from the same reports as the JSON
API, so everything from the pool is escaped by the template.  The page is
self-contained (inline CSS and SVG, no script) and reloads itself; its
chart of the last hour is drawn here, from ``/api/history``'s report.
Times are told in UTC.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from twisted.web.template import Tag, flattenString, tags

from ocsbal._views import changed, weight

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
th.n, td.n { text-align: right; font-variant-numeric: tabular-nums;
             white-space: nowrap; }
.since { display: block; color: #59636e; font-size: 12px; white-space: nowrap; }
.chart { background: #fff; border: 1px solid #d1d9e0; margin-bottom: 8px; }
.chart text { font-size: 11px; fill: #59636e; }
.legend { display: flex; gap: 16px; margin-bottom: 20px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
          margin-right: 4px; vertical-align: middle; }
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
#: A colour for each server's line in the chart, in turn; none is the
#: green, red or blue that mean up, down and connections in the table.
_LINES = ("#8250df", "#e16f24", "#1b7c83", "#bf3989", "#57606a", "#953800")
#: The chart's size, the room its labels take on the left and below, and
#: the room above and on the right, so the dots at the edges are not cut.
_WIDTH, _HEIGHT, _LEFT, _BELOW, _ABOVE, _RIGHT = 720, 160, 40, 20, 8, 6


def human_bytes(count: int) -> str:
    """``count`` bytes in the largest decimal unit that keeps it at 1 or more."""
    value = float(count)
    for unit in _UNITS[:-1]:
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_UNITS[-1]}"


def moment(at: float, now: float) -> str:
    """Clock time ``at`` in UTC: its time of day, and its date if not ``now``'s."""
    when, today = time.gmtime(at), time.gmtime(now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M:%S UTC", when)
    return time.strftime("%Y-%m-%d %H:%M UTC", when)


def duration(seconds: float) -> str:
    """Whole ``seconds`` in their largest unit and the next: ``5 min 3 s``."""
    left = max(int(seconds), 0)
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    first = next(i for i, (_, size) in enumerate(units) if left >= size or size == 1)
    (unit, size), (smaller, step) = units[first], units[min(first + 1, 3)]
    shown = f"{left // size} {unit}"
    rest = left % size // step
    return f"{shown} {rest} {smaller}" if rest else shown


#: One pool on the page: its report (``/api/pool``, the ``daemon`` included),
#: its servers' reports and its history (``/api/history``).
PoolView = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]


def _page(pools: Sequence[PoolView], refresh: int) -> Tag:
    title = "ocsbal: " + ", ".join(pool["name"] for pool, _, _ in pools)
    first, _, history = pools[0]
    daemon, now = first["daemon"], history["now"]
    several = len(pools) > 1
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(content=str(refresh), **{"http-equiv": "refresh"}),
            tags.title(title),
            tags.style(_STYLE),
        ),
        tags.body(
            tags.h1(title),
            tags.div(class_="sub", id="daemon")(
                f"ocsbal {daemon['version']} · up {duration(daemon['uptime'])}, "
                f"since {moment(daemon['started'], now)}"
            ),
            [_pool(view, f"{view[0]['name']}-" if several else "") for view in pools],
            tags.footer(
                f"Drawn at {moment(now, now)}; this page refreshes every {refresh} s."
            ),
        ),
    )


def _pool(view: PoolView, prefix: str) -> Tag:
    """One pool's part of the page; ``prefix`` tells its elements' ids apart."""
    pool, servers, history = view
    now = history["now"]
    return tags.section(class_="pool", id=f"pool-{pool['name']}")(
        tags.h2(class_="pool-name")(pool["name"]) if prefix else "",
        tags.div(class_="sub")(
            f"{pool['fqdn']} on {pool['vip']} · {pool['kind']} pool · "
            f"{pool['nat']} NAT · {pool['scheduler']}"
        ),
        _totals(pool["totals"]),
        tags.h2("Servers"),
        _servers(servers, now, prefix),
        tags.h2("Connections over the last hour"),
        _chart(history, servers, prefix),
        tags.h2("Listeners"),
        _listeners(pool["listeners"]),
    )


def _table(head: list[str], rows: list[Tag], numbers: tuple[str, ...] = ()) -> Tag:
    """A table of ``rows`` under ``head``.

    ``numbers`` are the titles of the columns of numbers, aligned right as
    their cells are.
    """
    titles = [tags.th(class_="n")(h) if h in numbers else tags.th(h) for h in head]
    return tags.table(tags.tr(titles), rows)


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


def _servers(servers: list[dict[str, Any]], now: float, prefix: str) -> Tag:
    busiest = max((s["active"] for s in servers), default=0)
    head = [
        "server",
        "address",
        "health",
        "state",
        "weight",
        "connections",
        "registrations",
        "total",
        "to server",
        "from server",
        "last check",
        "changed from the file",
    ]
    rows = [_server(server, busiest, now, prefix) for server in servers]
    return _table(head, rows, numbers=tuple(head[4:10]))  # weight to from server


def _server(server: dict[str, Any], busiest: int, now: float, prefix: str) -> Tag:
    health, detail = server["health"], server["health_detail"]
    state = "removed" if server["removed"] else server["state"]
    width = 100 * server["active"] // busiest if busiest else 0
    row = tags.tr(
        class_=f"server {health} {state}", id=f"{prefix}server-{server['name']}"
    )
    since = server["since"]
    down_since = (
        tags.span(class_="since")(
            f"since {moment(since, now)} ({duration(now - since)})"
        )
        if health == "down"
        else ""
    )
    return row(
        tags.td(tags.b(server["name"])),
        tags.td(server["address"]),
        tags.td(
            tags.span(class_=f"badge {health}")(health),
            tags.span(class_="detail")(detail) if detail else "",
            down_since,
        ),
        tags.td(class_=f"state-{state}")(state, _moving(server.get("move"))),
        tags.td(class_="n")(weight(server)),
        tags.td(class_="n")(
            tags.span(class_="track")(
                tags.span(class_="bar", style=f"width: {width}%")
            ),
            str(server["active"]),
        ),
        tags.td(class_="n registrations")(str(server["registrations"])),
        tags.td(class_="n")(str(server["total"])),
        tags.td(class_="n")(human_bytes(server["bytes_to_server"])),
        tags.td(class_="n")(human_bytes(server["bytes_from_server"])),
        tags.td(server["last_check"]),
        tags.td(class_="changed")(changed(server)),
    )


def _moving(move: dict[str, Any] | None) -> Tag | str:
    """A drained server's move, under its state: ``moving: 12 moved, 48 s left``."""
    if not move:
        return ""
    left = duration(max(0.0, move["ends_in"]))
    return tags.span(class_="detail move")(
        f"moving: {move['moved']} moved, {left} left"
    )


def _chart(
    history: dict[str, Any], servers: list[dict[str, Any]], prefix: str
) -> list[Tag]:
    """Each server's connections over the window, as an SVG chart and its key.

    Time runs left to right, from a window ago to now; the samples end with
    what the servers' reports say now, so the chart is never a sample
    behind the table.  A server's line is broken where it was not in the
    pool, and a point on its own is a dot.
    """
    now, window = history["now"], history["window"]
    times = [*history["times"], now]
    present: dict[str, int] = {}
    for server in servers:  # a removed server may share a new one's name
        present[server["name"]] = present.get(server["name"], 0) + server["active"]
    none = [None] * len(history["times"])
    series = {
        name: [*history["servers"].get(name, none), present.get(name)]
        for name in dict.fromkeys([*history["servers"], *present])
    }
    top = max([1, *(n for counts in series.values() for n in counts if n)])
    width, bottom = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _BELOW
    height = bottom - _ABOVE

    def point(at: float, count: int) -> str:
        x = _LEFT + width * (1 - (now - at) / window)
        return f"{x:.1f},{_ABOVE + height * (1 - count / top):.1f}"

    marks: list[Tag] = []
    key: list[Tag] = []
    for (name, counts), colour in zip(series.items(), itertools.cycle(_LINES)):
        runs: list[list[str]] = [[]]
        for at, count in zip(times, counts, strict=True):
            if count is None:
                runs.append([])
            else:
                runs[-1].append(point(at, count))
        for run in filter(None, runs):
            marks.append(_line(run, colour))
        key.append(
            tags.span(tags.span(class_="swatch", style=f"background: {colour}"), name)
        )
    labels = [
        _text(_LEFT - 6, _ABOVE + 4, "end", str(top)),
        _text(_LEFT - 6, bottom, "end", "0"),
        _text(_LEFT, _HEIGHT - 4, "start", f"{duration(window)} ago"),
        _text(_WIDTH - 2, _HEIGHT - 4, "end", "now"),
    ]
    svg = Tag("svg")(
        class_="chart",
        id=f"{prefix}history",
        width=str(_WIDTH),
        height=str(_HEIGHT),
        viewBox=f"0 0 {_WIDTH} {_HEIGHT}",
        role="img",
        **{"aria-label": "connections per server over the last hour"},
    )
    axis = Tag("polyline")(
        points=f"{_LEFT},{_ABOVE} {_LEFT},{bottom} {_WIDTH},{bottom}",
        fill="none",
        stroke="#d1d9e0",
    )
    return [svg(axis, marks, labels), tags.div(class_="legend")(key)]


def _line(points: list[str], colour: str) -> Tag:
    if len(points) == 1:
        x, y = points[0].split(",")
        return Tag("circle")(cx=x, cy=y, r="3", fill=colour)
    return Tag("polyline")(
        points=" ".join(points),
        fill="none",
        stroke=colour,
        **{"stroke-width": "2"},
    )


def _text(x: float, y: float, anchor: str, text: str) -> Tag:
    return Tag("text")(x=str(x), y=str(y), **{"text-anchor": anchor})(text)


def _listeners(listeners: list[dict[str, Any]]) -> Tag:
    rows = [
        tags.tr(
            tags.td(class_="n")(str(listener["port"])),
            tags.td(listener["protocol"]),
            *(
                tags.td(class_="n")(str(listener[key]))
                for key in ("active", "accepted", "rejected")
            ),
        )
        for listener in listeners
    ]
    head = ["port", "protocol", "open", "accepted", "rejected"]
    return _table(head, rows, ("port", "open", "accepted", "rejected"))


def render_status_page(pools: Sequence[PoolView], refresh: int = 5) -> bytes:
    """The status page of the pools a daemon serves, one part each.

    :param pools: each pool's :data:`PoolView`; the first's ``daemon``
        and history's ``now`` (the time the page says it was drawn at) are
        the page's.
    :param refresh: seconds after which the browser reloads the page.
    """
    results: list[bytes] = []
    failures: list[Any] = []
    # Nothing on the page is deferred, so flattening completes at once.
    flattenString(None, _page(pools, refresh)).addCallbacks(
        results.append, failures.append
    )
    if failures:
        failures[0].raiseException()
    return b"<!DOCTYPE html>\n" + results[0]
