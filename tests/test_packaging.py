"""The built wheel ships the twistd plugin the way Twisted expects.

It holds the SIP path compiled where a compiler is found, and is plain
Python, and works, where none is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import ocsbal.sip

ROOT = Path(__file__).parent.parent

#: The compiled SIP modules, as the wheel names them.
COMPILED_SIP = {
    f"ocsbal/sip/{name}" for name in ("_headers", "_inspector", "_accounts")
}


def build_wheel(source: Path, out: Path, **env: str) -> Path:
    """The wheel pip builds of ``source``, with ``env`` in its environment."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, source],
        check=True,
        timeout=300,
        env=os.environ | env,
    )
    (built,) = out.glob("ocsbal-*.whl")
    return built


def extensions(wheel: Path) -> set[str]:
    """The modules of ``wheel`` that are C extensions, by their paths."""
    return {
        name.split(".")[0]
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith(".so")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


def fresh_venv(tmp_path: Path) -> tuple[Path, str]:
    """A virtualenv borrowing this one's dependencies, and its site-packages.

    It borrows them through a .pth file, which does not process this
    environment's own .pth files, so the editable install of this checkout
    stays invisible.
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
    return python, site


def install(python: Path, wheel: Path) -> None:
    """Install ``wheel`` alone into the virtualenv of ``python``."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", python, "install", "-q"),
            *("--no-deps", "--no-index", wheel),
        ],
        check=True,
        timeout=120,
    )


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
    """``pip install`` of the wheel alone (no editable source on the path) is enough."""
    python, site = fresh_venv(tmp_path)
    install(python, wheel)
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


@pytest.mark.skipif(
    not ocsbal.sip.COMPILED and os.environ.get("CI") != "true",
    reason="no C compiler here to compile the SIP path (install gcc, python3-dev)",
)
def test_the_wheel_holds_the_sip_path_compiled(wheel: Path) -> None:
    assert extensions(wheel) >= COMPILED_SIP


SIP_WORKS = """
import ocsbal.sip as sip
message = b"OPTIONS sip:x SIP/2.0\\r\\nContent-Length: 2\\r\\n\\r\\nhi"
events = sip.SIPInspector().feed(message)
print(sip.COMPILED, sip.__file__, [type(event).__name__ for event in events])
"""


def test_without_a_compiler_the_wheel_is_python_and_works(tmp_path: Path) -> None:
    """Each compiled module's build fails alone, and the wheel has the source."""
    source = tmp_path / "source"  # a clean checkout: no earlier build to reuse
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    with tarfile.open(tmp_path / "source.tar", "w") as tar:
        for name in files:
            if (ROOT / name).exists():
                tar.add(ROOT / name, name)
    with tarfile.open(tmp_path / "source.tar") as tar:
        tar.extractall(source, filter="data")
    wheel = build_wheel(source, tmp_path / "wheel", CC="/bin/false")
    assert extensions(wheel) == set()
    python, site = fresh_venv(tmp_path)
    install(python, wheel)
    said = subprocess.run(
        [python, "-c", SIP_WORKS],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout.split()
    assert said == ["False", f"{site}/ocsbal/sip/__init__.py", "['Request']"]
