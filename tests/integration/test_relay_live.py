"""The relay on real loopback sockets, embedded as a Twisted service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import WAIT

SCENARIO = Path(__file__).with_name("relay_scenario.py")


def test_bytes_are_written_through_at_once_and_buffered_only_under_back_pressure() -> (
    None
):
    """16 MB pushed faster than it is read come back whole and in order, with
    Twisted's buffer taking what the sockets would not; then 500 small
    messages each go straight to the socket, never through that buffer."""
    done = subprocess.run(
        [sys.executable, str(SCENARIO)],
        capture_output=True,
        text=True,
        timeout=WAIT * 4,
        check=True,
    )
    results = json.loads(done.stdout)
    assert results["echoed_whole"]
    assert results["buffered"]["push"] > 0
    assert results["buffered"]["ping-pong"] == 0
