"""The operator's changes survive a SIGHUP and a restart of ``twistd -n ocsbal``."""

from __future__ import annotations

import json
import signal
import time

from harness import WAIT, Launcher, admin_call, ctl, pool_ini, told

ADMIN = "127.0.67.1:19900"


def test_a_drain_a_weight_and_an_added_server_survive_sighup_and_restart(
    launch: Launcher,
) -> None:
    servers = {"fe1": ("127.0.67.11", 1), "fe2": ("127.0.67.12", 1)}
    ini = pool_ini("127.0.67.10", servers, {15060: "sip"}, workers=2)
    ini += "\n[admin]\nlisten = tcp:19900:interface=127.0.67.1\n"
    launch.servers(
        pool_ini("127.0.67.10", {**servers, "fe3": ("127.0.67.13", 1)}, {15060: "sip"})
    )
    balancer = launch.balancer(ini)
    assert admin_call(ADMIN, "PATCH", "/api/servers/fe1", {"state": "drain"})[0] == 200
    assert admin_call(ADMIN, "PATCH", "/api/servers/fe2", {"weight": 7})[0] == 200
    new = {"name": "fe3", "address": "127.0.67.13", "weight": 3}
    assert admin_call(ADMIN, "POST", "/api/servers", new)[0] == 201
    state = launch.tmp_path / "pool.state"
    assert set(json.loads(state.read_text())["servers"]) == {"fe1", "fe2", "fe3"}

    def as_running() -> dict[str, tuple[str, int, dict[str, object]]]:
        listed = admin_call(ADMIN, "GET", "/api/servers")[1]
        return {s["name"]: (s["state"], s["weight"], s["overrides"]) for s in listed}

    expected = {
        "fe1": ("drain", 1, {"state": {"running": "drain", "file": "ready"}}),
        "fe2": ("ready", 7, {"weight": {"running": 7, "file": 1}}),
        "fe3": ("ready", 3, {"added": True}),
    }
    assert as_running() == expected
    balancer.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while told(balancer.output, "reloaded") < 1:
        assert time.monotonic() < deadline, balancer.output
        time.sleep(0.05)
    assert as_running() == expected
    balancer.assert_stops_cleanly()

    balancer = launch.balancer(ini)  # a restart, the file unchanged
    assert as_running() == expected
    assert "the operator's changes to fe1, fe2, fe3 apply" in balancer.output
    done = ctl("--admin", ADMIN, "forget", "--all")
    assert done.returncode == 0, done.stderr
    assert "forgot the operator's changes to fe1, fe2, fe3" in done.stdout
    assert as_running() == {
        "fe1": ("ready", 1, {}),
        "fe2": ("ready", 1, {}),
    }
    table = ctl("--admin", ADMIN, "servers").stdout
    assert "CHANGED" in table.splitlines()[0]
