"""The public names embedders rely on stay where they are."""

import ocsbal
import ocsbal.config
import ocsbal.scheduling
import ocsbal.service


def test_top_level_exports_are_exactly_the_public_api() -> None:
    assert sorted(ocsbal.__all__) == sorted(
        [
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
    )
    for name in ocsbal.__all__:
        assert getattr(ocsbal, name) is not None


def test_exports_are_the_defining_modules_objects() -> None:
    assert ocsbal.Pool is ocsbal.config.Pool
    assert ocsbal.PoolService is ocsbal.service.PoolService


def test_scheduling_module_names_for_tool_writers() -> None:
    for name in [
        "SCHEDULERS",
        "Candidate",
        "ServerLoad",
        "IScheduler",
        "NoServerAvailable",
        "RoundRobin",
        "WeightedRoundRobin",
        "LeastConnections",
        "WeightedLeastConnections",
        "scheduler_class",
    ]:
        assert hasattr(ocsbal.scheduling, name), name
