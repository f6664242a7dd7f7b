"""The public names embedders rely on stay where they are."""

import ocsbal
import ocsbal.admin
import ocsbal.config
import ocsbal.health
import ocsbal.monitors
import ocsbal.scheduling
import ocsbal.service
import ocsbal.sip
from ocsbal import _pool


def test_top_level_exports_are_exactly_the_public_api() -> None:
    assert ocsbal.__all__ == [
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


def test_exports_are_the_defining_modules_objects() -> None:
    config = ocsbal.config
    assert [getattr(ocsbal, name) for name in ocsbal.__all__] == [
        config.OCS_PORTS,
        _pool.AdminState,
        config.ConfigError,
        config.NatMode,
        config.Pool,
        config.PoolKind,
        ocsbal.service.PoolService,
        config.Port,
        config.PortProtocol,
        config.Problem,
        config.Server,
        "0.1.0",
    ]


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(ocsbal, "Balancer")
    assert "PoolService" in dir(ocsbal)


def test_each_public_module_exports_exactly_its_api() -> None:
    assert ocsbal.scheduling.__all__ == [
        "SCHEDULERS",
        "Candidate",
        "IScheduler",
        "LeastConnections",
        "NoServerAvailable",
        "RoundRobin",
        "ServerLoad",
        "WeightedLeastConnections",
        "WeightedRoundRobin",
        "scheduler_class",
    ]
    assert ocsbal.config.__all__ == [
        *("HEARTBEAT_PORTS", "OCS_PORTS", "Admin", "ConfigError", "Limits"),
        "LogSettings",
        *("Monitor", "MonitorType", "NatMode", "Pool", "PoolKind", "Port"),
        *("PortProtocol", "Problem", "Server", "TLSMode", "TLSSettings"),
        *("load", "parse", "render"),
    ]
    assert ocsbal.service.__all__ == [
        *("ConfigReloader", "LastServerError", "NetworkSetupError", "PoolService"),
        *("ReloadError", "TLSSetupError", "UnknownServerError"),
    ]
    assert ocsbal.admin.__all__ == [
        "AdminService",
        "AdminTokenError",
        "NoWorkersError",
        "PoolControl",
        "Served",
        "admin_site",
    ]
    assert ocsbal.health.__all__ == [
        "CheckNotMadeError",
        "HealthState",
        "IMonitor",
        "judge",
    ]
    for module in (ocsbal.scheduling, ocsbal.config, ocsbal.service, ocsbal.sip):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
