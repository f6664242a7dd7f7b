"""What every test run needs first: a SIP path built from the source it tests."""

from __future__ import annotations

import pytest

import pure_sip


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop before any test if a compiled SIP module is older than its source.

    The interpreter imports the extension in place of the ``.py`` beside
    it, so every test would run the code as it was before the edit.
    """
    if stale := pure_sip.stale():
        pytest.exit(
            f"ocsbal.sip's {', '.join(stale)} compiled before the last edit: "
            "run make install to rebuild",
            returncode=2,
        )
