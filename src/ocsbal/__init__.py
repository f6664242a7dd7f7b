"""ocsbal: a SIP-aware software load balancer for SIP server pools.

The public API: the pool model (:mod:`ocsbal.config`), the service that
balances it (:class:`PoolService`) and what an operator may allow of a
server (:class:`AdminState`) and, importable on their own, the schedulers
(:mod:`ocsbal.scheduling`).

The names are loaded when first used (PEP 562), so that importing a part,
``ocsbal.scheduling`` say, loads no more than that part needs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING

#: The installed distribution's version, so pyproject.toml is its one source;
#: read once, at import, so a running daemon tells the version it runs even
#: after another is installed under it.
__version__ = importlib.metadata.version("ocsbal")

__all__ = [
    "OCS_PORTS",
    "AdminState",
    "ConfigError",
    "NatMode",
    "Pool",
    "PoolKind",
    "PoolService",
    "Port",
    "PortProtocol",
    "Problem",
    "Server",
    "__version__",
]

#: Where each public name is defined.
_HOMES = {
    "AdminState": "ocsbal._pool",
    "PoolService": "ocsbal.service",
    **dict.fromkeys(
        [
            *("OCS_PORTS", "ConfigError", "NatMode", "Pool", "PoolKind", "Port"),
            *("PortProtocol", "Problem", "Server"),
        ],
        "ocsbal.config",
    ),
}

if TYPE_CHECKING:
    from ocsbal._pool import AdminState
    from ocsbal.config import (
        OCS_PORTS,
        ConfigError,
        NatMode,
        Pool,
        PoolKind,
        Port,
        PortProtocol,
        Problem,
        Server,
    )
    from ocsbal.service import PoolService


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ocsbal' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
