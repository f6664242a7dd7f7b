"""bench/pool_scale.py writes configurations ocsbal and HAProxy accept.

Terminated TLS (``--port-type sips-terminate``) must give both balancers
the same work: TLS ended on the VIP's 5061 with the pool's certificate and
begun again to each front end, whose certificate is checked against the
name ocsbal checks; the wrappers around the plain simulators must fit
them.  The other port types must write what they wrote before.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from service_identity.cryptography import verify_certificate_hostname

from bench_modules import bench_module
from ocsbal._tls import tls_problems
from ocsbal.config import load


@pytest.fixture(scope="module")
def pool_scale() -> ModuleType:
    """bench/pool_scale.py, imported as the benchmark runs it."""
    return bench_module("pool_scale")


def _run(pool_scale: ModuleType, work: Path, *argv: str) -> Any:
    args = pool_scale.parse(["--clients", "20000", *argv])
    run = pool_scale.Run(args, work)
    if run.tls:
        run.certificates()
    return run


def _haproxy_valid(config: str, work: Path, name: str) -> None:
    if shutil.which("haproxy") is None:
        message = "haproxy is missing; install it with: apt-get install haproxy"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    path = work / name
    path.write_text(config)
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_terminated_tls_pool_is_valid_and_ends_tls_on_5061(
    pool_scale: ModuleType, tmp_path: Path
) -> None:
    """ocsbal's pool, read as ``ocsbal check`` reads it (its certificate
    checked against the pool FQDN), terminates and inspects TLS on 5061,
    and names each front end as its certificate does."""
    run = _run(pool_scale, tmp_path, "--port-type", "sips-terminate")
    (tmp_path / "pool.ini").write_text(run.ocsbal_config())
    pool = load(tmp_path / "pool.ini", tls_problems)
    assert {p.number: p.protocol.value for p in pool.ports} == {5061: "sips"}
    assert pool.tls is not None
    assert pool.tls.terminate
    assert pool.tls.inspect
    assert pool.monitor.ports == (5061,)
    for server in pool.servers:
        pem = (tmp_path / f"{server.name}.pem").read_bytes()
        certificate = x509.load_pem_x509_certificates(pem)[0]
        name = pool_scale.FRONT_END_NAMES[server.name]
        assert server.tls_name == name
        verify_certificate_hostname(certificate, name)


def test_terminated_tls_haproxy_verifies_front_ends_as_ocsbal_does(
    pool_scale: ModuleType, tmp_path: Path
) -> None:
    """The measured HAProxy ends TLS on 5061 and checks every front end's
    certificate (required, against its name), resuming no session."""
    run = _run(pool_scale, tmp_path, "--port-type", "sips-terminate")
    config = run.haproxy_config(0, 1)
    _haproxy_valid(config, tmp_path, "haproxy.cfg")
    assert f"bind {pool_scale.VIP}:5061 ssl crt {tmp_path}/pool.pem" in config
    servers = [line for line in config.splitlines() if "server fe" in line]
    assert len(servers) == len(pool_scale.FRONT_ENDS)
    for line, (name, address) in zip(
        servers, pool_scale.FRONT_ENDS.items(), strict=True
    ):
        assert f" {address}:5061 " in line
        assert "ssl verify required" in line
        assert f"verifyhost {pool_scale.FRONT_END_NAMES[name]}" in line
        assert "no-ssl-reuse" in line


def test_terminated_tls_wrappers_fit_the_simulators(
    pool_scale: ModuleType, tmp_path: Path
) -> None:
    """The clients' wrapper takes plain SIP where the clients connect and
    opens checked TLS to the VIP's 5061 from an address of its own a
    process; the front ends' wrapper ends TLS on each front end's 5061
    and relays to ocsim's 5060; every address is in pool_scale's blocks."""
    run = _run(pool_scale, tmp_path, "--port-type", "sips-terminate")
    assert run.client_target == (pool_scale.TLS_WRAPPER, 5060)
    assert run.wrapper_procs == 3  # 20,000 clients, 8,000 a process
    clients = [run.tls_client_side_config(k) for k in range(run.wrapper_procs)]
    servers = run.tls_server_side_config()
    _haproxy_valid(clients[0], tmp_path, "tls-clients.cfg")
    _haproxy_valid(servers, tmp_path, "tls-servers.cfg")
    sources = {re.search(r"source (\S+)", c)[1] for c in clients}  # type: ignore[index]
    assert len(sources) == run.wrapper_procs
    assert f"server vip {pool_scale.VIP}:5061 ssl verify required" in clients[0]
    for address in pool_scale.FRONT_ENDS.values():
        assert f"bind {address}:5061 ssl crt" in servers
        assert f"{address}:5060\n" in servers
    every = " ".join([*clients, servers])
    for found in re.findall(r"127\.\d+\.\d+\.\d+", every):
        assert ipaddress.IPv4Address(found) in ipaddress.IPv4Network("127.0.192.0/19")
        assert found.startswith(pool_scale.OUR_BLOCKS), found


@pytest.mark.parametrize("port_type", ["sip", "sips", "tcp"])
def test_other_port_types_stay_plain_on_5060(
    pool_scale: ModuleType, tmp_path: Path, port_type: str
) -> None:
    """Without terminated TLS: 5060 of the given type, no [tls], no TLS in
    HAProxy, the clients straight to the VIP."""
    run = _run(pool_scale, tmp_path, "--port-type", port_type)
    ini = run.ocsbal_config()
    assert f"[ports]\n5060 = {port_type}\n" in ini
    assert "[tls]" not in ini
    config = run.haproxy_config(0, 1)
    assert f"bind {pool_scale.VIP}:5060\n" in config
    assert "ssl" not in config
    assert run.client_target == (pool_scale.VIP, 5060)
