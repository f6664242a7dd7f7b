"""SIPp to two Kamailio registrars through a live balancer: real SIP both sides.

SIPp (Debian's sip-tester) makes :data:`CALLS` calls of
``sipp/register.xml``, each on a TCP connection of its own to the VIP's
``sip`` port: a REGISTER of an address of record of its own, then an
OPTIONS, both answered 200 by one of two Kamailio registrars (locations in
memory, no authentication); the call then holds its connection a second
and closes it.  With SIP stacks ocsbal did not write, the test proves that:

- every call succeeds: SIPp counts :data:`CALLS` successful calls and no
  failed one, and each call was one connection accepted on the VIP;
- the scheduler spreads them: each Kamailio's own log shows at least 30 %
  of the REGISTERs, and exactly as many as the admin API says were relayed
  to it;
- the SIP inspector follows every conversation: while a call holds its
  connection, ``/api/connections`` shows its address of record registered
  for an hour (the REGISTER matched with Kamailio's 200) and the 200 to the
  OPTIONS as its last message; ``/metrics`` counts every REGISTER, OPTIONS
  and 200, and no inspection given up.
"""

from __future__ import annotations

import csv
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import WAIT, Launcher, Process, admin_call, pool_ini, require_tool
from kamailio import complaints, registrars, requests

SIPP = "/usr/bin/sipp"
SCENARIO = Path(__file__).with_name("sipp") / "register.xml"

VIP = "127.0.50.10"
CLIENT = "127.0.50.1"  # SIPp's address
ADMIN = "127.0.50.1:19900"
REGISTRARS = {"kam1": "127.0.50.11", "kam2": "127.0.50.12"}
CALLS = 2000
RATE = 200  # calls per second: 10 s of calls, about 200 connections open at once
SIPP_TIMEOUT = 40  # seconds SIPp may run in all


@pytest.fixture
def kamailios(launch: Launcher) -> Iterator[dict[str, Process]]:
    """The two Kamailio registrars, listening; stopped, children and all."""
    require_tool(SIPP, "sip-tester")
    with registrars(launch, REGISTRARS) as started:
        yield started


def from_sipp(process: Process, method: str) -> int:
    """How many of SIPp's requests of ``method`` (users u1, u2...) Kamailio
    logged: not the balancer's health checks."""
    logged = requests(process, method)
    return sum(n for user, n in logged.items() if user.startswith("u"))


def run_sipp(tmp_path: Path) -> tuple[int, dict[str, str], str]:
    """Run the scenario to the end: SIPp's exit status, final statistics, errors."""
    stats, errors = tmp_path / "sipp-stats.csv", tmp_path / "sipp-errors.log"
    args = [
        *(SIPP, f"{VIP}:5060", "-sf", str(SCENARIO), "-nostdin"),
        # tn: TCP, one connection per call (t1 would be one for all calls);
        # SIPp refuses a max_socket above ulimit -n, often 1024.
        *("-t", "tn", "-max_socket", "1000", "-i", CLIENT),
        *("-m", str(CALLS), "-r", str(RATE), "-l", "600"),
        *("-recv_timeout", "5000", "-timeout", f"{SIPP_TIMEOUT}s", "-timeout_error"),
        *("-trace_stat", "-stf", str(stats), "-trace_err", "-error_file", str(errors)),
    ]
    with (tmp_path / "sipp.log").open("wb") as screen:
        code = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=screen,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            timeout=SIPP_TIMEOUT + WAIT,
            check=False,
        ).returncode
    *_, final = csv.DictReader(stats.open(), delimiter=";")
    return code, final, errors.read_text() if errors.exists() else ""


class Watch:
    """Polls ``/api/connections`` in a thread while the calls run.

    Keeps, for each address of record seen registered, the last report of
    its connection's SIP; every inspection state seen on any connection; and
    what stopped the polling, if anything did.
    """

    def __init__(self, admin: str, period: float = 0.2) -> None:
        self.admin, self.period = admin, period
        self.calls: dict[str, dict[str, Any]] = {}
        self.inspection: Counter[str] = Counter()
        self.longest_gap = 0.0  # seconds between two polls, at most
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    def _poll(self) -> None:
        last = time.monotonic()
        try:
            while not self._stop.wait(self.period):
                _, connections = admin_call(self.admin, "GET", "/api/connections")
                now = time.monotonic()
                self.longest_gap, last = max(self.longest_gap, now - last), now
                for connection in connections:
                    sip = connection["sip"]
                    self.inspection[sip["inspection"]] += 1
                    for aor in sip["registered"]:
                        self.calls[aor] = sip
        except Exception as e:  # the test reports it
            self.error = repr(e)


def idle_pool(admin: str) -> dict[str, Any]:
    """``/api/pool`` once no connection is open (SIPp's have all closed)."""
    deadline = time.monotonic() + WAIT
    while True:
        pool: dict[str, Any] = admin_call(admin, "GET", "/api/pool")[1]
        if pool["totals"]["active"] == 0:
            return pool
        assert time.monotonic() < deadline, pool["totals"]
        time.sleep(0.1)


def relayed(admin: str) -> dict[str, int]:
    """Connections relayed to each server so far."""
    _, servers = admin_call(admin, "GET", "/api/servers")
    return {s["name"]: s["total"] for s in servers}


def sip_metrics(admin: str) -> dict[str, float]:
    """The samples of the ``ocsbal_sip_*`` metrics in ``/metrics``, by name."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=WAIT) as reply:
        text = reply.read().decode()
    samples = (line.rpartition(" ") for line in text.splitlines())
    return {
        name: float(value)
        for name, _, value in samples
        if name.startswith("ocsbal_sip_")
    }


def test_sipp_registers_through_the_balancer_to_two_kamailios_without_failure(
    launch: Launcher, kamailios: dict[str, Process]
) -> None:
    servers = {name: (address, 1) for name, address in REGISTRARS.items()}
    monitor = "\n[monitor]\ntype = sip-options\ninterval = 2\n"
    admin = f"\n[admin]\nlisten = tcp:19900:interface={CLIENT}\n"
    balancer = launch.balancer(pool_ini(VIP, servers, {5060: "sip"}) + monitor + admin)
    accepted = idle_pool(ADMIN)["listeners"][0]["accepted"]
    relayed_before = relayed(ADMIN)

    with Watch(ADMIN) as watch:
        code, stats, errors = run_sipp(launch.tmp_path)

    # SIPp: every call succeeded, each on a connection of its own.
    calls = {k: v for k, v in stats.items() if k.endswith("Call(C)")}
    assert code == 0, (calls, errors)
    assert (calls["SuccessfulCall(C)"], calls["FailedCall(C)"]) == (str(CALLS), "0")
    pool = idle_pool(ADMIN)
    assert pool["listeners"][0]["accepted"] - accepted == CALLS
    assert pool["totals"]["rejected"] == 0

    # Spread: each Kamailio answered what the balancer relayed to it, 30 % or more.
    split = Counter(relayed(ADMIN))
    split.subtract(relayed_before)
    assert split.total() == CALLS, split
    for name, process in kamailios.items():
        assert from_sipp(process, "REGISTER") == split[name], split
        assert from_sipp(process, "OPTIONS") == split[name], split
        assert split[name] >= 0.3 * CALLS, split
        assert complaints(process) == []

    # The inspector: every call seen registered for an hour, then the OPTIONS'
    # 200 last; never given up.
    assert watch.error is None
    assert set(watch.calls) == {
        f"sip:u{n}@itest.example.com" for n in range(1, CALLS + 1)
    }, f"{len(watch.calls)} of {CALLS} seen; polls {watch.longest_gap:.2f} s apart"
    assert Counter(sip["last_message"] for sip in watch.calls.values()) == {
        "200 OK (OPTIONS)": CALLS
    }
    assert all(
        3590 < left <= 3600
        for sip in watch.calls.values()
        for left in sip["registered"].values()
    )
    assert set(watch.inspection) == {"on"}
    pool_label = 'pool="itest"'
    assert sip_metrics(ADMIN) == {
        f'ocsbal_sip_requests_total{{method="OPTIONS",{pool_label}}}': CALLS,
        f'ocsbal_sip_requests_total{{method="REGISTER",{pool_label}}}': CALLS,
        f'ocsbal_sip_responses_total{{class="2xx",{pool_label}}}': 2 * CALLS,
    }  # and no inspection given up

    _, health = admin_call(ADMIN, "GET", "/api/servers")
    assert [s["health"] for s in health] == ["up", "up"]  # SIP OPTIONS checks
    balancer.assert_stops_cleanly()
