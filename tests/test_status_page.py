"""The status page, rendered from hand-made reports: no reactor, no browser."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

from ocsbal._status_page import human_bytes, render_status_page


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
        "last_check": "ok",
        "active": 0,
        "total": 0,
        "bytes_to_server": 0,
        "bytes_from_server": 0,
    }
    return report | kw


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


def parsed(servers: list[dict[str, Any]], **kw: Any) -> Collector:
    page = render_status_page(POOL, servers, **kw)
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
    page = render_status_page(POOL, [server("a", last_check="<script>x</script>")])
    assert b"<script>" not in page
    assert b"&lt;script&gt;x&lt;/script&gt;" in page


def test_the_page_refreshes_itself() -> None:
    page = parsed([server("a")], refresh=7)
    [meta] = [a for tag, a in page.elements if a.get("http-equiv") == "refresh"]
    assert meta["content"] == "7"
    assert "This page refreshes every 7 s." in page.text


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
