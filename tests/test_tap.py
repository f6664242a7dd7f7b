"""``twistd ocsbal`` options: the configuration is checked before anything starts."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from twisted.python.usage import UsageError

from ocsbal.service import ConfigReloader, PoolService
from ocsbal.tap import Options, makeService

EXAMPLE = str(Path(__file__).parents[1] / "examples" / "pool.ini")
#: The demo pool's VIP is on loopback, so this host holds it.
DEMO = str(Path(__file__).parents[1] / "examples" / "demo.ini")


def test_the_pool_is_loaded_while_options_are_parsed() -> None:
    options = Options()
    options.parseOptions(["--config", DEMO, "--grace", "2.5"])
    assert options.pool.vip == "127.0.0.10"
    service = makeService(options)
    assert isinstance(service, PoolService)
    assert service.configured is options.pool
    assert service.grace_period == 2.5
    [reloader] = [c for c in service if isinstance(c, ConfigReloader)]
    assert (reloader.path, reloader.pool_service) == (DEMO, service)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--config is required"),
        (["--config", EXAMPLE, "--grace", "-1"], "--grace must be 0 or more seconds"),
        (["--config", "/nonexistent/pool.ini"], "cannot read: No such file"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Options().parseOptions(argv)


def test_every_configuration_problem_is_in_the_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text("[pool]\nname = p\nnat = dsr\n[server:a]\naddress = x\n")
    with pytest.raises(UsageError) as raised:
        Options().parseOptions(["--config", str(bad)])
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 5  # fqdn, vip missing; nat; address


def test_a_certificate_that_cannot_be_used_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "pool.ini"
    config.write_text(
        Path(EXAMPLE).read_text() + "\n[tls]\nmode = terminate\ncertificate = no.pem\n"
    )
    with pytest.raises(UsageError) as raised:
        Options().parseOptions(["--config", str(config)])
    assert str(raised.value) == (
        "invalid configuration:\n"
        f"{config}: [tls] certificate = {tmp_path / 'no.pem'}: cannot read: No such "
        "file or directory; give a PEM file of the pool's private key and "
        "certificate"
    )


def test_a_vip_this_host_does_not_hold_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "pool.ini"
    config.write_text(Path(EXAMPLE).read_text().replace("10.0.0.10", "192.0.2.10"))
    with pytest.raises(UsageError, match=r"vip = 192\.0\.2\.10 is not an address"):
        Options().parseOptions(["--config", str(config)])


def test_the_daemon_freezes_what_it_loaded_out_of_the_collectors_passes() -> None:
    options = Options()
    options.parseOptions(["--config", DEMO])
    gc.unfreeze()
    try:
        makeService(options)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
