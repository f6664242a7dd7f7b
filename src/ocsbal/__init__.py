"""ocsbal: a SIP-aware software load balancer for SIP server pools.

The public API: the pool model (:mod:`ocsbal.config`), the service that
balances it (:class:`PoolService`) and what an operator may allow of a
server (:class:`AdminState`) and, importable on their own, the schedulers
(:mod:`ocsbal.scheduling`).
"""

from ocsbal._proxy import AdminState
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

__version__ = "0.1.0"

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
