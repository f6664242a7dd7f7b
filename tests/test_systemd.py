"""examples/systemd: the unit runs what twistd and ocsbal accept, and reloads."""

from __future__ import annotations

import configparser
import grp
import pwd
import shlex
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.scripts.twistd import ServerOptions

from ocsbal.service import ConfigReloader, PoolService
from ocsbal.tap import Options

EXAMPLES = Path(__file__).parents[1] / "examples"
UNIT = EXAMPLES / "systemd" / "ocsbal.service"
SYSUSERS = EXAMPLES / "systemd" / "ocsbal.sysusers.conf"
#: The demo pool's VIP is on loopback, so this host can load it.
DEMO = str(EXAMPLES / "demo.ini")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


@pytest.fixture
def ocsbal_user(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A user and group ``ocsbal`` (4711), whether this host has them or not."""
    user = SimpleNamespace(name="ocsbal", uid=4711, gid=4711)
    real_user, real_group = pwd.getpwnam, grp.getgrnam

    def getpwnam(name: str) -> object:
        if name == user.name:
            return ("ocsbal", "x", user.uid, user.gid, "", "/", "/usr/sbin/nologin")
        return real_user(name)

    def getgrnam(name: str) -> object:
        return ("ocsbal", "x", user.gid, []) if name == user.name else real_group(name)

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    monkeypatch.setattr(grp, "getgrnam", getgrnam)
    return user


def test_exec_start_is_one_twistd_ocsbal_command_both_parsers_accept(
    ocsbal_user: SimpleNamespace,
) -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert Path(argv[0]).name == "twistd"
    config = argv.index("--config")
    assert argv[config + 1] == "/etc/ocsbal/pool.ini"
    argv[config + 1] = DEMO  # a file this host holds

    options = ServerOptions()
    options.parseOptions(argv[1:])

    assert options.subCommand == "ocsbal"
    assert isinstance(options.subOptions, Options)
    assert options.subOptions["config"] == DEMO
    assert options.subOptions.pool.vip == "127.0.0.10"
    assert options["nodaemon"]  # logs to standard output: the journal
    assert options["pidfile"] == ""
    assert (options["uid"], options["gid"]) == (ocsbal_user.uid, ocsbal_user.gid)


def test_the_user_it_runs_as_is_the_one_sysusers_makes() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    [made] = [
        line.split()[1]
        for line in SYSUSERS.read_text().splitlines()
        if line.startswith("u ")
    ]
    assert argv[argv.index("--uid") + 1] == argv[argv.index("--gid") + 1] == made


def test_reload_sends_the_signal_the_daemon_reloads_on() -> None:
    command = shlex.split(unit()["Service"]["ExecReload"])
    assert command[0] == "/bin/kill"
    assert command[-1] == "$MAINPID"  # the control process; workers ignore it
    number = signal.Signals["SIG" + command[1].removeprefix("-")]
    reactor = MemoryReactorClock()
    options = Options()
    options.parseOptions(["--config", DEMO])
    reloader = ConfigReloader(DEMO, PoolService(options.pool, reactor), reactor)
    reloader.startService()
    try:
        assert signal.getsignal(number) == reloader._hangup
    finally:
        reloader.stopService()


def test_a_failure_restarts_it_and_it_may_hold_a_large_pool() -> None:
    service = unit()["Service"]
    assert service["Restart"] == "on-failure"
    # SIGTERM to the control process, which stops its workers gracefully.
    assert service["KillMode"] == "mixed"
    # Two descriptors a connection: 100,000 clients in one process.
    assert int(service["LimitNOFILE"]) >= 2 * 100_000
