"""The start's checks of what the host can give the pool (ocsbal._network)."""

from __future__ import annotations

import socket

import pytest

from ocsbal._network import (
    IP_BIND_ADDRESS_NO_PORT,
    IP_TRANSPARENT,
    NetworkSetupError,
    _SourcedClient,
    _TransparentClient,
    check_ports_free,
    check_transparent,
    check_vip,
)
from ocsbal.config import Pool, Port, Server


def test_half_nat_without_the_capability_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(socket.socket, "setsockopt", refused)
    with pytest.raises(NetworkSetupError, match="needs the CAP_NET_ADMIN capability"):
        check_transparent("127.0.0.1")


def test_a_vip_on_this_host_passes_and_one_elsewhere_is_named() -> None:
    check_vip("127.0.1.10", freebind=False)
    with pytest.raises(NetworkSetupError, match=r"vip = 192\.0\.2\.7 is not an"):
        check_vip("192.0.2.7", freebind=False)


def test_freebind_binds_an_address_this_host_does_not_hold() -> None:
    check_vip("192.0.2.7", freebind=True)


@pytest.mark.parametrize(("transparent", "options"), [(False, 1), (True, 2)])
def test_a_sourced_server_socket_takes_its_port_when_it_connects(
    transparent: bool, options: int
) -> None:
    """``IP_BIND_ADDRESS_NO_PORT``: a source address is not limited to one
    connection per port over all servers, but per server."""
    client_type = _TransparentClient if transparent else _SourcedClient
    client = client_type.__new__(client_type)  # the socket only, no connection
    client.addressFamily, client.socketType = socket.AF_INET, socket.SOCK_STREAM
    with client.createInternetSocket() as sock:
        set_here = [
            sock.getsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT),
            sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT),
        ]
    assert sum(set_here) == options


def test_ports_in_use_are_named_all_at_once() -> None:
    pool = Pool(
        name="p",
        fqdn="p.example.com",
        vip="127.0.1.10",
        servers=[Server("fe1", "127.0.1.11")],
        ports=[Port(15060, "sip"), Port(15061, "sips"), Port(15062)],
    )
    check_ports_free(pool)
    with (
        socket.create_server(("127.0.1.10", 15060)),
        socket.create_server(("127.0.1.10", 15062)),
        pytest.raises(NetworkSetupError) as refused,
    ):
        check_ports_free(pool)
    assert str(refused.value) == (
        "[ports] 127.0.1.10:15060, 127.0.1.10:15062 already in use (by another "
        "program, or another ocsbal): stop it, or choose other ports"
    )
