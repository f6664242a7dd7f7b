"""The built wheel ships the twistd plugin the way Twisted expects."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (built,) = out.glob("ocsbal-*.whl")
    return built


def test_wheel_ships_the_plugin_but_not_twisted_package_markers(wheel: Path) -> None:
    """An __init__.py under twisted/ would overwrite Twisted's own on install."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/ocsbal_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "ocsbal/py.typed" in names
    assert "ocsbal/tap.py" in names


def test_plain_install_into_a_fresh_virtualenv_makes_twistd_find_ocsbal(
    wheel: Path, tmp_path: Path
) -> None:
    """
    ``pip install`` of the wheel alone (no editable source on the path) is enough.

    The fresh virtualenv borrows the test environment's dependencies through a
    .pth file, which does not process that environment's own .pth files, so the
    editable install of this checkout stays invisible.
    """
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    twistd_help = "import sys; from twisted.scripts.twistd import run; run()"
    probe = subprocess.run(
        [python, "-c", twistd_help, "--help"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert "ocsbal" in probe.stdout
    where = subprocess.run(
        [python, "-c", "import ocsbal; print(ocsbal.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(site), where  # the wheel's copy, not this checkout
