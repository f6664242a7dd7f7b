"""The house's layers: which module may import which, read from their imports.

Every module of ``src/ocsbal`` is listed in :data:`LAYERS` with the modules of
ocsbal it may import; each import it makes (at the top, under
``TYPE_CHECKING``, or inside a function) must be one of them, and together
they must form no cycle.  A new module fails here until it is placed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest

import ocsbal

SOURCE = Path(ocsbal.__file__).parent

#: Each module, and the modules of ocsbal it may import.
LAYERS: dict[str, set[str]] = {
    # Pure: no sockets, no reactor.
    "scheduling": set(),
    "sip._headers": set(),
    "sip._inspector": {"sip._headers"},
    "sip._accounts": {"sip._headers", "sip._inspector"},
    "sip": {"sip._accounts", "sip._headers", "sip._inspector"},
    "_idle": set(),
    "_logs": set(),
    "_connlog": set(),
    "jsonlog": set(),
    "_endpoints": set(),
    "_status_page": {"_views"},
    # The model of a pool, and its file.
    "_rules": {"scheduling"},
    "_sections": {"_rules"},
    "_model": {"_rules", "_sections", "scheduling"},
    "config": {"_model", "_rules", "_sections"},
    "_token": {"_model"},
    "_tls": {"_model"},
    "_steering": set(),
    "_network": {"_endpoints", "_model", "_steering"},
    # Health, and the pool at run time.
    "health": {"_model"},
    "_pool": {"_model", "health", "scheduling"},
    "monitors": {"_checks", "_endpoints", "_model", "_tls", "health", "sip"},
    "_checks": {"_pool", "health"},
    # The relay.
    "_sides": {"sip"},
    "_outbound": {"_endpoints", "_logs", "_model", "_network", "_sides", "_tls"},
    "_limits": {"_sections"},
    "_admission": set(),
    "_relay": {
        *("_admission", "_connlog", "_endpoints", "_limits", "_logs", "_model"),
        *("_outbound", "_pool", "_sides", "_tls", "scheduling", "sip"),
    },
    "_listener": {"_connlog", "_endpoints", "_limits", "_model", "_relay", "_sides"},
    "_sweep": {"_idle", "_relay"},
    # Read-only views and the web API, never the service.
    "_report": {"_endpoints", "_model", "_pool", "_relay", "_sweep"},
    "_metrics": {"_pool", "_relay"},
    "_history": {"_pool"},
    "_guard": {"_model"},
    "_api": {"_guard", "_history", "_model", "_moving", "_pool", "_report"},
    "admin": {
        *("_api", "_endpoints", "_guard", "_history", "_metrics", "_model"),
        *("_report", "_status_page", "_token"),
    },
    # The composition root, and what runs it.
    "_site": {"_rules", "config"},
    "_reloader": {"_model", "_site", "_token", "config"},
    "_moving": {"_pool", "sip"},
    "_overrides": {"_model"},
    "_statefile": {"_overrides"},
    "service": {
        *("_endpoints", "_idle", "_model", "_network", "_pool"),
        *("_relay", "_report", "_sweep", "_tls", "_token", "admin", "config"),
        *("_listener", "_moving", "_reloader", "_statefile", "monitors"),
        "sip",  # to say at start whether it runs compiled
    },
    # The processes: a control process and its workers, which relay.
    "_amp": set(),
    "_worker": {
        *("_amp", "_endpoints", "_model", "_pool", "_report", "config"),
        *("_connlog", "_moving", "service"),
    },
    "_control": {
        *("_amp", "_endpoints", "_model", "_network", "_pool", "_report"),
        *("_connlog", "config", "service"),
    },
    "tap": {"_control", "_network", "_site", "_tls", "config", "service"},
    "_views": set(),
    "_ctl": {"_token", "_views", "config"},
    "_cli": {"_ctl", "_idle", "_site", "_tls", "config"},
    "demo": {"_ctl", "config", "service", "sip"},
    "__init__": {"_pool", "config", "service"},
}


def path(name: str) -> Path:
    """The file of module ``name`` (``sip._headers``, ``sip``, ``__init__``)."""
    module = SOURCE.joinpath(*name.split("."))
    return module / "__init__.py" if module.is_dir() else module.with_suffix(".py")


def module_names() -> list[str]:
    """Every module of the package, by its name below ``ocsbal``."""
    names = []
    for file in SOURCE.rglob("*.py"):
        parts = file.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names.append(".".join(parts))
    return sorted(names)


def imports(name: str) -> set[str]:
    """The modules of ocsbal that module ``name`` imports, anywhere in it."""
    tree = ast.parse(path(name).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # "from ocsbal import _ctl" imports a module
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    ours = {m.removeprefix("ocsbal.") for m in found if m.startswith("ocsbal.")}
    return {m for m in ours if path(m).exists()} - {name}


def test_every_module_has_its_place() -> None:
    assert module_names() == sorted(LAYERS)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_module_imports_only_what_its_layer_allows(name: str) -> None:
    assert imports(name) <= LAYERS[name], imports(name) - LAYERS[name]


def test_the_imports_form_no_cycle() -> None:
    graph = {name: imports(name) for name in LAYERS}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join([*path, name])
        if name in done:
            return
        for imported in graph[name]:
            visit(imported, (*path, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_no_module_is_much_over_500_lines() -> None:
    sizes = {name: len(path(name).read_text().splitlines()) for name in LAYERS}
    assert {name: n for name, n in sizes.items() if n > 560} == {}


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", dedent(code) + "\nprint(*sorted(sys.modules))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


def test_ocsbal_ctl_loads_neither_the_relay_nor_prometheus() -> None:
    loaded = loaded_by("import sys\nimport ocsbal._cli")
    assert "ocsbal._ctl" in loaded
    assert {
        "ocsbal._relay",
        "ocsbal._splice",
        "ocsbal._sides",
        "ocsbal.admin",
    }.isdisjoint(loaded)
    assert not any(m.startswith("prometheus_client") for m in loaded)


def test_importing_the_model_loads_nothing_of_twisted() -> None:
    loaded = loaded_by("import sys\nimport ocsbal.config\nimport ocsbal.sip")
    assert not any(m.startswith("twisted") for m in loaded)


def test_the_package_loads_a_public_name_when_first_used() -> None:
    loaded = loaded_by("import sys\nimport ocsbal\nocsbal.Pool")
    assert "ocsbal.config" in loaded
    assert "ocsbal.service" not in loaded
