"""The status page of a live balancer, in a real headless Chromium.

The screenshot must show the page: mostly drawn, with the green of an up
server, the red of a down one, the blue of a connection bar and the purple
of fe1's connections in the chart.  The page says the version and uptime,
when it was drawn, since when fe3 is down, and the registration held.  Run
with ``OCSBAL_UPDATE_SCREENSHOT=1`` to refresh docs/img/status-page.png.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from harness import (
    WAIT,
    Launcher,
    Load,
    admin_call,
    connect,
    pool_ini,
    register,
    require_tool,
)
from PIL import Image

import ocsbal

CHROMIUM = "/usr/bin/chromium"
DOCS_IMAGE = Path(__file__).parents[2] / "docs" / "img" / "status-page.png"
UP_GREEN, DOWN_RED, BAR_BLUE, FIRST_LINE = (
    (0x1A, 0x7F, 0x37),
    (0xCF, 0x22, 0x2E),
    (0x09, 0x69, 0xDA),
    (0x82, 0x50, 0xDF),
)


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root, Chromium refuses to start sandboxed
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            # Without these, Chromium reaches for Google's hosts at start.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1280,720",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
        check=True,
    )


def pixels_near(image: Image.Image, colour: tuple[int, int, int]) -> int:
    return sum(
        count
        for count, pixel in image.getcolors(image.width * image.height) or []
        if all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True))
    )


def row(dom: str, server: str) -> str:
    """The table row of ``server`` in the page's ``dom``."""
    start = dom.index(f'id="server-{server}"')
    return dom[start : dom.index("</tr>", start)]


def test_the_status_page_shows_the_pool(launch: Launcher, tmp_path: Path) -> None:
    require_tool(CHROMIUM, "chromium")
    servers = {f"fe{i}": (f"127.0.44.1{i}", 1) for i in (1, 2, 3)}
    launch.servers(
        pool_ini(
            "127.0.44.10",
            {"fe1": servers["fe1"], "fe2": servers["fe2"]},
            {15060: "sip"},
        )
    )
    ini = pool_ini("127.0.44.10", servers, {15060: "sip", 15061: "tcp"})
    ini += "\n[monitor]\nports = 15060\ninterval = 1\ntimeout = 0.5\nfall = 1\n"
    ini += "\n[admin]\nlisten = tcp:19900:interface=127.0.44.1\n"
    balancer = launch.balancer(ini)
    admin = "127.0.44.1:19900"
    deadline = time.monotonic() + WAIT
    while "server fe3 (127.0.44.13) is down" not in balancer.output:
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)
    admin_call(admin, "PATCH", "/api/servers/fe2", {"state": "drain"})
    # fe1 takes every new connection now: this one registers through it.
    with connect("127.0.44.10", 15060) as registered:
        register(registered)
        with Load("127.0.44.10", 15060, short=0, held=3):
            time.sleep(0.5)  # the held connections are open and talking
            screenshot = f"--screenshot={tmp_path / 'page.png'}"
            chromium(tmp_path, f"http://{admin}/", screenshot)
            dom = chromium(tmp_path, f"http://{admin}/", "--dump-dom").stdout

    for text in ["fe1", "fe2", "fe3", "127.0.44.13", "drain", "down", "15061"]:
        assert text in dom
    assert f"ocsbal {ocsbal.__version__} · up " in dom
    assert re.search(r"Drawn at \d\d:\d\d:\d\d UTC", dom), dom
    since = r'class="since">since \d\d:\d\d:\d\d UTC \(\d+ s\)'
    assert re.search(since, row(dom, "fe3")), row(dom, "fe3")
    assert 'class="n registrations">1<' in row(dom, "fe1"), row(dom, "fe1")
    assert '<svg class="chart" id="history"' in dom
    image = Image.open(tmp_path / "page.png").convert("RGB")
    assert image.size == (1280, 720)
    background = image.getpixel((image.width - 1, image.height - 1))
    drawn = image.width * image.height - pixels_near(image, background)
    assert drawn > 0.02 * image.width * image.height  # text and tables, not blank
    assert pixels_near(image, UP_GREEN) > 200  # fe1's badge
    assert pixels_near(image, DOWN_RED) > 200  # fe3's badge
    assert pixels_near(image, BAR_BLUE) > 500  # fe1's connection bar
    assert pixels_near(image, FIRST_LINE) > 100  # fe1 in the chart: 0, then 4 now
    if os.environ.get("OCSBAL_UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "page.png", DOCS_IMAGE)
    balancer.assert_stops_cleanly()
