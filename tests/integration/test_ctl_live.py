"""``ocsbal ctl`` against a live balancer, as an operator types it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harness import Launcher, ctl, pool_ini


def ctl_config(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ocsbal ctl --config CONFIG ARGS``."""
    return ctl("--config", str(config), *args)


def start(launch: Launcher, admin: str) -> Path:
    servers = {f"fe{i}": (f"127.0.43.1{i}", 1) for i in (1, 2, 3)}
    launch.servers(pool_ini("127.0.43.10", servers, {15060: "sip"}))
    two = {k: v for k, v in servers.items() if k != "fe3"}
    launch.balancer(pool_ini("127.0.43.10", two, {15060: "sip"}) + admin)
    return launch.tmp_path / "pool.ini"


def test_servers_add_drain_weight_remove(launch: Launcher) -> None:
    config = start(launch, "\n[admin]\nlisten = tcp:19900:interface=127.0.43.1\n")
    listing = ctl_config(config, "servers")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert " ".join(lines[0].split()[:6]) == "NAME ADDRESS WEIGHT STATE HEALTH ACTIVE"
    assert lines[1].split()[:5] == ["fe1", "127.0.43.11", "1", "ready", "up"]

    done = ctl_config(config, "add", "fe3", "127.0.43.13", "--weight", "50")
    assert done.stdout == (
        "added fe3 (127.0.43.13), weight 50: it takes connections once its "
        "health checks pass\n"
    )
    assert ctl_config(config, "drain", "fe2").stdout == (
        "fe2 is draining: no new connections, 0 open\n"
    )
    assert ctl_config(config, "weight", "fe1", "5").stdout == (
        "fe1 has weight 5 for new connections\n"
    )
    assert ctl_config(config, "remove", "fe2").stdout == (
        "removed fe2: it had no open connections\n"
    )
    state = json.loads(ctl_config(config, "--json", "servers").stdout)
    assert [(s["name"], s["weight"], s["state"]) for s in state] == [
        ("fe1", 5, "ready"),
        ("fe3", 50, "ready"),
    ]
    refused = ctl_config(config, "drain", "fe9")
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: 404 no server named fe9 in the pool\n",
    )


def test_the_admin_interface_is_reached_however_it_is_written(
    launch: Launcher,
) -> None:
    """HOST:PORT, a URL, the listen string itself: each reaches it, no traceback."""
    start(launch, "\n[admin]\nlisten = tcp:19900:interface=127.0.43.1\n")
    for given in (
        "127.0.43.1:19900",
        "http://127.0.43.1:19900",
        "tcp:19900:interface=127.0.43.1",
        "tcp:host=127.0.43.1:port=19900",
    ):
        done = ctl("--admin", given, "servers")
        assert (done.returncode, done.stderr) == (0, ""), given
        assert done.stdout.split()[:2] == ["NAME", "ADDRESS"], given
    refused = ctl("--admin", "ssl:19900", "servers")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: --admin ssl:19900: not an admin")
    assert refused.stderr.count("\n") == 1


def test_an_admin_interface_on_ipv6_is_reached_from_its_config(
    launch: Launcher,
) -> None:
    config = start(launch, "\n[admin]\nlisten = tcp6:19902:interface=\\:\\:1\n")
    listing = ctl_config(config, "servers")
    assert (listing.returncode, listing.stderr) == (0, "")
    assert listing.stdout.split()[:2] == ["NAME", "ADDRESS"]


def test_a_token_is_required_when_configured(launch: Launcher) -> None:
    token = launch.write("admin.token", "s3cret\n")
    admin = (
        f"\n[admin]\nlisten = tcp:19900:interface=127.0.43.1\ntoken_file = {token}\n"
    )
    config = start(launch, admin)
    assert ctl_config(config, "pool").returncode == 0  # the file names the token
    wrong = launch.write("wrong.token", "guess\n")
    refused = ctl_config(config, "--token-file", str(wrong), "pool")
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: 401 a valid admin token is required\n",
    )


def test_an_unreachable_interface_is_named(launch: Launcher) -> None:
    config = launch.write(
        "pool.ini",
        pool_ini("127.0.43.10", {"fe1": ("127.0.43.11", 1)}, {15060: "sip"})
        + "\n[admin]\nlisten = tcp:19901:interface=127.0.43.1\n",
    )
    failed = ctl_config(config, "servers")
    assert failed.returncode == 1
    assert failed.stderr.startswith(
        "error: cannot reach the admin interface at tcp:host=127.0.43.1:port=19901"
    )
