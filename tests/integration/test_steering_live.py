"""Each client address's connections to one socket of a SO_REUSEPORT group."""

from __future__ import annotations

import select
import socket

import pytest

from ocsbal._network import SharedPort

VIP = "127.0.69.10"


def landed(port: SharedPort, sources: list[str]) -> dict[str, set[int]]:
    """Connect from each of ``sources``; which socket of the group took each."""
    found: dict[str, set[int]] = {}
    for source in sources:
        with socket.create_connection((VIP, port.number), 5, (source, 0)):
            ready, _, _ = select.select(port.sockets, [], [], 5)
            assert len(ready) == 1
            accepted, _ = ready[0].accept()
            accepted.close()
            found.setdefault(source, set()).add(port.sockets.index(ready[0]))
    return found


@pytest.fixture
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((VIP, 0))
        return int(probe.getsockname()[1])


def test_steered_by_source_each_address_reaches_one_socket(free_port: int) -> None:
    port = SharedPort(VIP, free_port, 3, False, 50, by_source=True)
    try:
        sources = [f"127.0.69.{100 + n}" for n in range(6)] * 4
        found = landed(port, sources)
    finally:
        port.stopListening()
    assert all(len(sockets) == 1 for sockets in found.values()), found
    assert set().union(*found.values()) == {0, 1, 2}  # and all are used


def test_unsteered_one_address_spreads_over_the_sockets(free_port: int) -> None:
    port = SharedPort(VIP, free_port, 3, False, 50)
    try:
        found = landed(port, ["127.0.69.100"] * 60)
    finally:
        port.stopListening()
    assert len(found["127.0.69.100"]) > 1  # the kernel's hash of ports too
