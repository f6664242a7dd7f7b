"""Prometheus metrics of a pool, read from the relay at scrape time.

The relay keeps plain integer counters; nothing is updated per connection
or per byte for Prometheus' sake.  A scrape walks the servers and the open
connections once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocsbal._pool import AdminState

if TYPE_CHECKING:
    from ocsbal._relay import Relay


class PoolCollector(Collector):
    """Collects the metrics of one pool's servers and listeners.

    :param relay: the pool's connections, and through it its servers.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, labelled by pool and server or port."""
        relay = self.relay
        pool = relay.pool.name
        server = ["pool", "server"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily(
                "ocsbal_server_up",
                "Whether the server passes its health checks.",
                labels=server,
            ),
            "weight": GaugeMetricFamily(
                "ocsbal_server_weight", "The server's scheduling weight.", labels=server
            ),
            "active": GaugeMetricFamily(
                "ocsbal_server_active_connections",
                "Connections to the server open or being opened.",
                labels=server,
            ),
            "total": CounterMetricFamily(
                "ocsbal_server_connections",
                "Connections relayed to the server.",
                labels=server,
            ),
            "sent": CounterMetricFamily(
                "ocsbal_server_sent_bytes",
                "Bytes relayed to the server.",
                labels=server,
            ),
            "received": CounterMetricFamily(
                "ocsbal_server_received_bytes",
                "Bytes relayed from the server.",
                labels=server,
            ),
        }
        state = GaugeMetricFamily(
            "ocsbal_server_admin_state",
            "1 for the server's admin state (ready, drain or maint).",
            labels=[*server, "state"],
        )
        for backend in relay.servers.backends.values():
            labels = [pool, backend.name]
            families["up"].add_metric(labels, backend.health.up)
            families["weight"].add_metric(labels, backend.weight)
            families["active"].add_metric(labels, backend.active)
            families["total"].add_metric(labels, backend.total)
            families["sent"].add_metric(labels, backend.sent)
            families["received"].add_metric(labels, backend.received)
            for admin in AdminState:
                state.add_metric([*labels, admin.value], admin is backend.state)
        yield from families.values()
        yield state
        yield from self._listeners(pool)

    def _listeners(self, pool: str) -> Iterator[Metric]:
        relay = self.relay
        labels = ["pool", "port", "protocol"]
        active = GaugeMetricFamily(
            "ocsbal_listener_active_connections",
            "Client connections open on the VIP port.",
            labels=labels,
        )
        accepted = CounterMetricFamily(
            "ocsbal_listener_accepted_connections",
            "Client connections accepted on the VIP port.",
            labels=labels,
        )
        rejected = CounterMetricFamily(
            "ocsbal_listener_rejected_connections",
            "Client connections closed because no server could take them.",
            labels=labels,
        )
        open_by_port = relay.active_by_port()
        for port in relay.pool.ports:
            values = [pool, str(port.number), port.protocol.value]
            active.add_metric(values, open_by_port[port.number])
            accepted.add_metric(values, relay.accepted[port.number])
            rejected.add_metric(values, relay.rejected[port.number])
        yield from (active, accepted, rejected)
        yield from self._sip(pool)

    def _sip(self, pool: str) -> Iterator[Metric]:
        tally = self.relay.sip
        for name, documentation, label, counts in [
            ("requests", "SIP requests seen, by method.", "method", tally.requests),
            ("responses", "SIP responses seen, by class.", "class", tally.responses),
            (
                "keepalives",
                "SIP keep-alives seen: client pings and server pongs.",
                "kind",
                tally.keepalives,
            ),
            (
                "inspections_given_up",
                "SIP connections no longer inspected (relayed as plain TCP), "
                "by reason.",
                "reason",
                tally.gave_up,
            ),
        ]:
            family = CounterMetricFamily(
                f"ocsbal_sip_{name}", documentation, labels=["pool", label]
            )
            for value, count in sorted(counts.items()):
                family.add_metric([pool, value], count)
            yield family
