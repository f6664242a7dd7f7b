"""The SIP path as the Python it is compiled from, beside what ocsbal imports.

Where setup.py has compiled ``ocsbal.sip``'s modules, the interpreter
imports the extensions in their place.  :func:`load` executes the three
source files again, as modules of their own that import one another, so
that a test can hold the compiled path to its reference; where nothing is
compiled the two are the same code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import ocsbal.sip

#: The compiled modules, each after those it imports.
MODULES = ("_headers", "_inspector", "_accounts")

SOURCES = Path(ocsbal.sip.__file__).parent


def load() -> dict[str, ModuleType]:
    """The pure-Python ``ocsbal.sip`` modules, by name, fresh from source."""
    names = [f"ocsbal.sip.{module}" for module in MODULES]
    imported = {name: sys.modules[name] for name in names}
    pure = {}
    try:
        for module, name in zip(MODULES, names, strict=True):
            spec = importlib.util.spec_from_file_location(
                name, SOURCES / f"{module}.py"
            )
            assert spec is not None
            assert spec.loader is not None
            pure[module] = sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(pure[module])  # its imports find the others
    finally:
        sys.modules.update(imported)
    return pure


def stale() -> list[str]:
    """The compiled modules older than their source: make install rebuilds them."""
    found = []
    for module in MODULES:
        built = Path(str(sys.modules[f"ocsbal.sip.{module}"].__file__))
        source = SOURCES / f"{module}.py"
        if built != source and built.stat().st_mtime < source.stat().st_mtime:
            found.append(module)
    return found
