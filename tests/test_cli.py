"""``ocsbal check``: validate pool files and print the effective pools."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ocsbal._cli import main
from ocsbal.config import load, parse

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_check_prints_the_effective_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLES / "edge.ini")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"; {EXAMPLES / 'edge.ini'}: valid;")
    assert "connect_timeout = 5\n" in out  # a default, filled in
    assert parse(out) == load(EXAMPLES / "edge.ini")


def test_check_takes_several_files_and_checks_them_together(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each file's effective pool in turn; a clash between them is refused."""
    internal, external = EXAMPLES / "edge.ini", EXAMPLES / "edge-external.ini"
    assert main(["check", str(internal), str(external)]) == 0
    out = capsys.readouterr().out
    cut = out.index(f"; {external}: valid;")
    first, second = out[:cut], out[cut:]
    assert first.startswith(f"; {internal}: valid;")
    assert parse(first) == load(internal)
    assert parse(second) == load(external)
    assert main(["check", str(internal), str(internal)]) == 1
    assert f"{internal}: [pool] name = edge01: is already" in capsys.readouterr().err


def test_check_warns_of_what_a_valid_pool_should_not_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.ini"
    edge = (EXAMPLES / "edge.ini").read_text()
    short.write_text(edge.replace("idle_timeout = 1800", "idle_timeout = 600"))
    assert main(["check", str(short)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: pool edge01: idle_timeout = 600 s is below the 1800 s OCS 2007 R2 "
        "requires; quiet clients will be cut off"
    ]
    assert "idle_timeout = 600\n" in captured.out


def test_check_lists_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[pool]\nname = p\nretries = many\n[server:fe1]\naddress = x\n")
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "invalid configuration:",
        f"{bad}: [pool] fqdn = : is required",
        f"{bad}: [pool] vip = : is required",
        f"{bad}: [pool] retries = many: must be a whole number, 0 or more",
        f"{bad}: [server:fe1] address = x: must be a static IPv4 or IPv6 address, "
        "not a host name",
    ]


def test_check_lists_values_relations_and_tls_files_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused value, a broken relation and an unusable [tls] file, at once."""
    bad = tmp_path / "bad.ini"
    bad.write_text(
        "[pool]\nname = p\nfqdn = p.example.com\nvip = 10.0.0.10\nretries = -1\n"
        "[server:fe1]\naddress = 10.0.0.11\n[server:fe2]\naddress = 10.0.0.11\n"
        "[tls]\nmode = terminate\ncertificate = pool.pem\n"
    )
    assert main(["check", str(bad)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "invalid configuration:",
        f"{bad}: [pool] retries = -1: must be a whole number, 0 or more",
        f"{bad}: [tls] certificate = {tmp_path / 'pool.pem'}: cannot read: No such "
        "file or directory; give a PEM file of the pool's private key and "
        "certificate",
        f"{bad}: [server:fe2] address = 10.0.0.11: is already server fe1's "
        "address; each server needs its own",
    ]


def test_the_console_script_is_installed() -> None:
    ocsbal = Path(sys.executable).with_name("ocsbal")
    run = subprocess.run(
        [ocsbal, "check", EXAMPLES / "pool.ini"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "[server:fe03]" in run.stdout


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_version_prints_the_installed_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pyproject = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"ocsbal {pyproject['project']['version']}\n"
