"""Coverage-guided fuzzing of the SIP path, a bounded run in every ``make test``.

libFuzzer (through atheris) mutates a scratch corpus seeded with a
REGISTER and its answer, and with the RFC 4475 torture messages where
``../shared/sip-torture`` holds them, for a fixed number of inputs; any
exception, or any input taking over a second, fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_sip import OK, REGISTER

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_sip.py"
TORTURE = Path(__file__).parents[2] / "shared" / "sip-torture"
RUNS = 30_000


def test_the_inspector_survives_a_bounded_fuzzing_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is missing; install it with: .venv/bin/pip install atheris"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "register").write_bytes(REGISTER + OK)
    for message in sorted(TORTURE.glob("*.dat")):
        shutil.copy(message, corpus)  # libFuzzer adds what it finds here
    run = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-runs={RUNS}",
            "-max_len=70000",
            "-timeout=1",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"Done {RUNS} runs" in run.stderr
