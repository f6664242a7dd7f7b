"""What ``make demo`` and ``make test`` install, read from ``make -n``.

A dry run prints the recipes without running one; it runs in a copy of the
files the Makefile reads, where nothing is installed yet, as on a fresh
machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
_MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    tree = tmp_path_factory.mktemp("checkout")
    for name in ("Makefile", "pyproject.toml", "setup.py"):
        shutil.copy(ROOT / name, tree)
    shutil.copytree(ROOT / "src" / "ocsbal" / "sip", tree / "src" / "ocsbal" / "sip")
    return tree


def dry_run(tree: Path, target: str) -> list[str]:
    """The commands ``make TARGET`` would run in ``tree``."""
    # Not the flags of a make running the tests (make test): -n alone.
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_VARIABLES}
    run = subprocess.run(
        ["make", "-n", target],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return run.stdout.splitlines()


def packages(commands: list[str]) -> set[str]:
    """The system packages the commands install where they are missing."""
    return {
        package
        for line in commands
        for found in re.findall(r"for p in ([^;]*); do", line)
        for package in found.split()
    }


def installs(commands: list[str]) -> list[str]:
    """What the commands ``pip install``."""
    return [
        line.split("pip install ")[1] for line in commands if "pip install -e" in line
    ]


def test_make_demo_installs_what_the_demo_and_its_tour_use(fresh: Path) -> None:
    commands = dry_run(fresh, "demo")
    assert packages(commands) == {"netcat-openbsd", "curl"}
    assert installs(commands) == ["-e ."]
    assert commands[-1] == ".venv/bin/python -m ocsbal.demo"


def test_make_test_installs_everything_the_tests_use(fresh: Path) -> None:
    commands = dry_run(fresh, "test")
    assert packages(commands) >= {
        *("chromium", "sip-tester", "kamailio", "iproute2", "keepalived", "curl"),
        *("haproxy", "gcc", "libc6-dev", "python3-dev"),
    }
    assert installs(commands) == ["-e '.[test]'"]
    # The compiler comes before the project, so that its SIP path is compiled.
    project = next(i for i, c in enumerate(commands) if "pip install -e" in c)
    assert any("for p in" in c for c in commands[:project])


def test_make_bench_installs_its_extra_alone(fresh: Path) -> None:
    commands = dry_run(fresh, "bench")
    assert packages(commands) >= {"haproxy", "nginx-light", "wrk", "gcc"}
    assert installs(commands) == ["-e '.[bench]'"]


def test_each_extra_holds_what_its_command_imports() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=;\s]", r, maxsplit=1)[0] for r in extras[extra]}

    assert names("test") >= {"pytest", "ruff", "mypy", "mkdocs", "trustme"}
    assert names("bench") >= {"matplotlib", "trustme"}  # bench/setups.py's certificates
