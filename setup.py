"""Build ocsbal, its SIP path compiled by mypyc where this machine can.

Everything else is in pyproject.toml.  The three modules that follow SIP on
every message are plain, strictly typed Python; mypyc compiles them into C
extensions that the interpreter then imports in their place.  The build
never depends on it: without a C compiler each extension fails alone
(``optional``), and the wheel holds the same modules as Python, the
reference that the tests hold the compiled ones to.  ``OCSBAL_PURE=1``
builds the pure wheel on purpose.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

#: The modules compiled: the inspector and what the relay does with what
#: it says (see docs/architecture.md).
COMPILED = [
    "src/ocsbal/sip/_headers.py",
    "src/ocsbal/sip/_inspector.py",
    "src/ocsbal/sip/_accounts.py",
]


def compiled() -> list[Extension]:
    """The C extensions of :data:`COMPILED`, or none if they are not wanted."""
    if os.environ.get("OCSBAL_PURE") == "1":
        return []
    from mypyc.build import mypycify

    # Type-checked on their own (the project's mypy plugins are not build
    # requirements), as strictly as `make lint` checks them.
    extensions = mypycify(
        ["--config-file=", "--strict", "--follow-imports=skip", *COMPILED],
        opt_level="3",
    )
    for extension in extensions:
        extension.optional = True
    return extensions


setup(ext_modules=compiled())
