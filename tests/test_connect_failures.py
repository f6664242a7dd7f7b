"""Failed connections to a server, counted by kind for /metrics."""

from __future__ import annotations

import pytest
from OpenSSL import SSL
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet import defer, error
from twisted.python.failure import Failure

from ocsbal._metrics import PoolCollector
from ocsbal._report import figures
from ocsbal._tls import failure_kind
from test_relay import Harness


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (error.ConnectionRefusedError(), "refused"),
        (error.TimeoutError(), "timeout"),
        (error.TCPTimedOutError(), "timeout"),
        (defer.TimeoutError(), "timeout"),
        (error.NoRouteError(), "unreachable"),
        (SSL.Error([("SSL routines", "", "certificate verify failed")]), "tls"),
        (error.ConnectionLost(), "closed"),
        (error.ConnectError(), "other"),
    ],
)
def test_each_failure_has_its_kind(failure: BaseException, kind: str) -> None:
    assert failure_kind(failure) == kind


def test_failures_are_counted_per_server_and_reason_in_the_metrics() -> None:
    h = Harness(servers=2, retries=1)
    h.accept()
    h.refuse()
    h.reactor.tcpClients[-1][2].clientConnectionFailed(
        h.reactor.connectors[-1], Failure(error.TimeoutError())
    )
    counted = figures(h.relay)
    assert counted["servers"]["fe0"]["connect_failures"] == {"refused": 1}
    assert counted["servers"]["fe1"]["connect_failures"] == {"timeout": 1}
    registry = CollectorRegistry()
    registry.register(PoolCollector([(h.servers, counted)]))
    text = generate_latest(registry).decode()
    assert (
        'ocsbal_server_connect_failures_total{pool="pool01",reason="refused",'
        'server="fe0"} 1.0'
    ) in text
