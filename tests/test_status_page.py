"""The status page, rendered from hand-made reports: no reactor, no browser."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from ocsbal._status_page import duration, human_bytes, moment, render_status_page

#: 2026-12-01 12:00:00 UTC, when the pages below are drawn.
NOW = 1796126400.0


def server(name: str, **kw: Any) -> dict[str, Any]:
    report = {
        "name": name,
        "address": "10.0.0.11",
        "weight": 100,
        "state": "ready",
        "removed": False,
        "health": "up",
        "streak": 0,
        "health_detail": "",
        "since": NOW - 7200,
        "last_check": "ok",
        "active": 0,
        "total": 0,
        "bytes_to_server": 0,
        "bytes_from_server": 0,
        "registrations": 0,
    }
    return report | kw


def history(**servers: list[int | None]) -> dict[str, Any]:
    """Samples every 30 s up to 30 s ago, as many as the lists of counts."""
    count = max((len(c) for c in servers.values()), default=0)
    return {
        "now": NOW,
        "interval": 30.0,
        "window": 3600.0,
        "times": [NOW - 30 * (count - i) for i in range(count)],
        "servers": servers,
    }


POOL: dict[str, Any] = {
    "name": "pool01",
    "fqdn": "pool01.contoso.com",
    "vip": "10.0.0.10",
    "kind": "enterprise",
    "nat": "full",
    "scheduler": "weighted-least-connections",
    "listeners": [
        {"port": 5060, "protocol": "sip", "active": 3, "accepted": 9, "rejected": 1}
    ],
    "totals": {
        "servers": 3,
        "up": 2,
        "ready": 1,
        "active": 3,
        "accepted": 9,
        "rejected": 1,
    },
    "daemon": {"version": "1.2.3", "started": NOW - 3660, "uptime": 3660.0},
}


class Collector(HTMLParser):
    """Collects each element's attributes, and fails on mismatched tags."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.open.pop() == tag

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def with_class(self, name: str) -> list[dict[str, str | None]]:
        return [a for _, a in self.elements if name in (a.get("class") or "").split()]


def parsed(
    servers: list[dict[str, Any]], past: dict[str, Any] | None = None, **kw: Any
) -> Collector:
    page = render_status_page([(POOL, servers, past or history())], **kw)
    assert page.startswith(b"<!DOCTYPE html>\n<html")
    collector = Collector()
    collector.feed(page.decode())
    collector.close()
    assert collector.open == []
    return collector


def test_a_row_per_server_with_its_health_and_state() -> None:
    page = parsed(
        [
            server("fe1", active=4),
            server("fe2", health="down", last_check="port 5061 refused"),
            server("fe3", state="drain"),
            server("fe4", removed=True, state="drain"),
        ]
    )
    rows = page.with_class("server")
    assert [r["class"] for r in rows] == [
        "server up ready",
        "server down ready",
        "server up drain",
        "server up removed",
    ]
    assert [b["class"] for b in page.with_class("badge")] == [
        "badge up",
        "badge down",
        "badge up",
        "badge up",
    ]
    assert "port 5061 refused" in page.text


def test_a_server_not_checked_or_short_of_rise_says_so() -> None:
    page = parsed(
        [
            server("fe1", health="maint", state="maint", health_detail="not checked"),
            server("fe2", health="down", health_detail="1 of 2 checks passed"),
        ]
    )
    assert [b["class"] for b in page.with_class("badge")] == [
        "badge maint",
        "badge down",
    ]
    assert "not checked" in page.text
    assert "1 of 2 checks passed" in page.text


def test_bars_are_proportional_to_the_busiest_server() -> None:
    page = parsed([server("a", active=8), server("b", active=2), server("c")])
    assert [b["style"] for b in page.with_class("bar")] == [
        "width: 100%",
        "width: 25%",
        "width: 0%",
    ]


def test_no_connections_anywhere_draws_empty_bars() -> None:
    page = parsed([server("a"), server("b")])
    assert [b["style"] for b in page.with_class("bar")] == ["width: 0%"] * 2


def test_everything_from_the_pool_is_escaped() -> None:
    page = render_status_page(
        [(POOL, [server("a", last_check="<script>x</script>")], history())]
    )
    assert b"<script>" not in page
    assert b"&lt;script&gt;x&lt;/script&gt;" in page


def test_the_page_refreshes_itself() -> None:
    page = parsed([server("a")], refresh=7)
    [meta] = [a for tag, a in page.elements if a.get("http-equiv") == "refresh"]
    assert meta["content"] == "7"
    assert "Drawn at 12:00:00 UTC; this page refreshes every 7 s." in page.text


def test_the_daemon_says_its_version_and_uptime() -> None:
    page = parsed([server("a")])
    assert "ocsbal 1.2.3 · up 1 h 1 min, since 10:59:00 UTC" in page.text


def test_a_down_server_says_since_when() -> None:
    page = parsed(
        [
            server("fe1", health="down", since=NOW - 330),
            server("fe2", health="down", since=NOW - 86400 * 2),
            server("fe3"),
        ]
    )
    assert "since 11:54:30 UTC (5 min 30 s)" in page.text
    assert "since 2026-11-29 12:00 UTC (2 d)" in page.text
    assert len(page.with_class("since")) == 2  # nothing said of the up one


def test_registrations_and_every_number_are_aligned_right() -> None:
    page = parsed([server("a", registrations=412)])
    [cell] = page.with_class("registrations")
    assert "n" in (cell["class"] or "").split()
    assert "412" in page.text
    titles = [a.get("class") for tag, a in page.elements if tag == "th"]
    assert titles == [
        *(None, None, None, None),  # server, address, health, state
        *("n",) * 6,  # weight, connections, registrations, total, bytes each way
        *(None, None),  # last check, changed from the file
        *("n", None, "n", "n", "n"),  # port, protocol, open, accepted, rejected
    ]


def chart(page: Collector) -> list[tuple[str, dict[str, str | None]]]:
    """The marks of the chart: each server's lines and dots."""
    start = page.elements.index(
        next(e for e in page.elements if e[1].get("id") == "history")
    )
    return [
        (tag, a)
        for tag, a in page.elements[start + 2 :]  # past the svg and its axis
        if tag in ("polyline", "circle")
    ]


def test_the_chart_draws_each_servers_connections_over_the_hour() -> None:
    page = parsed(
        [server("a", active=8), server("b", active=2)],
        history(a=[0, 4], b=[None, 2]),
    )
    (line_a, a), (line_b, b) = chart(page)
    assert (line_a, line_b) == ("polyline", "polyline")
    # Now, what the table says, is at the right (x = 714), an hour ago at
    # the left (x = 40); 8, the most, at the top (y = 8), 0 on the axis
    # (y = 140).
    assert a["points"] == "702.8,140.0 708.4,74.0 714.0,8.0"
    assert b["points"] == "708.4,107.0 714.0,107.0"
    assert a["stroke"] != b["stroke"]
    key = page.with_class("swatch")
    assert [s["style"] for s in key] == [
        f"background: {a['stroke']}",
        f"background: {b['stroke']}",
    ]
    assert {"a", "b", "1 h ago", "now", "8"} <= set(page.text)


def test_a_servers_line_breaks_where_it_was_not_in_the_pool() -> None:
    page = parsed([server("a")], history(a=[1, 1, None, 1, None, 1]))
    assert [tag for tag, _ in chart(page)] == ["polyline", "circle", "polyline"]


def test_a_server_gone_ends_its_line_and_one_new_starts_with_a_dot() -> None:
    page = parsed([server("new", active=3)], history(old=[1, 2]))
    [(line, old), (dot, new)] = chart(page)
    assert (line, old["points"]) == ("polyline", "702.8,96.0 708.4,52.0")  # of 3
    assert (dot, new["cx"], new["cy"]) == ("circle", "714.0", "8.0")


def test_a_removed_server_counts_with_a_new_one_of_its_name() -> None:
    page = parsed([server("a", active=1), server("a", removed=True, active=1)])
    [(dot, a)] = chart(page)
    assert (dot, a["cy"]) == ("circle", "8.0")  # 2, at the top


def test_before_the_first_sample_each_server_is_a_dot_for_now() -> None:
    page = parsed([server("a"), server("b")], history())
    assert [tag for tag, _ in chart(page)] == ["circle", "circle"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59.9, "59 s"),
        (61, "1 min 1 s"),
        (3600, "1 h"),
        (3601, "1 h"),
        (3660, "1 h 1 min"),
        (90000, "1 d 1 h"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_moment_is_the_time_of_day_today_and_the_date_before() -> None:
    assert moment(NOW - 1, NOW) == "11:59:59 UTC"
    assert moment(NOW - 12 * 3600 - 1, NOW) == "2026-11-30 23:59 UTC"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (259_200, "259.2 kB"),
        (1_100_000, "1.1 MB"),
        (3 * 10**12, "3.0 TB"),
        (5 * 10**15, "5000.0 TB"),
    ],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


def test_what_the_operator_changed_of_the_file_is_shown() -> None:
    overrides = {"weight": {"running": 50, "file": 100}}
    page = parsed([server("a", overrides=overrides), server("b")])
    assert len(page.with_class("changed")) == 2
    assert "weight 50 (file 100)" in page.text


def test_a_move_under_way_is_shown_under_the_state() -> None:
    move = {"within": 600, "ends_in": 480.0, "moved": 12}
    page = parsed([server("a", state="drain", move=move)])
    assert len(page.with_class("move")) == 1
    assert "moving: 12 moved, 8 min left" in page.text
