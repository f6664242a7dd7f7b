"""Each monitor against real loopback peers: what passes, what fails and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import WAIT

SCENARIOS = Path(__file__).with_name("monitor_scenarios.py")
TIMEOUT = 1.0  # the monitors' timeout in monitor_scenarios.py


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, str(SCENARIOS)],
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
        check=True,
    )
    parsed: dict[str, dict[str, object]] = json.loads(done.stdout)
    return parsed


@pytest.mark.parametrize(
    ("scenario", "result"),
    [
        ("tcp-good", "ok"),
        ("tcp-closed", "port 16061 refused"),
        ("tls-good", "ok"),
        ("tls-plain-server", "port 16061 connected, but no TLS handshake completed"),
        ("tls-plain-text", "port 16061 TLS handshake failed: wrong version number"),
        ("tls-closed", "port 16061 refused"),
        # Where the pool terminates TLS, as the relay verifies (issue 11).
        ("tls-verified", "ok"),
        (
            "tls-verified-wrong-name",
            "port 16061 TLS handshake failed: certificate not issued to "
            "fe9.example.com",
        ),
        (
            "tls-verified-untrusted",
            "port 16061 TLS handshake failed: certificate verify failed",
        ),
        ("sips-good", "ok"),
        ("sips-verified", "ok"),
        (
            "sips-verified-wrong-name",
            "port 16062 TLS handshake failed: certificate not issued to "
            "fe9.example.com",
        ),
        ("sips-silent", "port 16062 connected, but no final SIP response came"),
        ("sip-plain-to-tls", "port 16062 closed without a final SIP response"),
        ("https-ok", "ok"),
        ("https-moved", "ok"),
        ("https-broken", "port 16443 GET /broken answered HTTP 500"),
        ("https-silent", "port 16443 connected, but no HTTP response in time"),
        ("https-plain-text", "port 16443 TLS handshake failed: wrong version number"),
    ],
)
def test_monitor(
    results: dict[str, dict[str, object]], scenario: str, result: str
) -> None:
    outcome = results[scenario]
    assert str(outcome["result"]).startswith(result)
    # A check never outlives its timeout.
    assert float(str(outcome["seconds"])) <= TIMEOUT + 0.5
