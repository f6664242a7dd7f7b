"""Prometheus metrics of a pool, from its figures at scrape time.

The relay keeps plain integer counters; nothing is updated per connection
or per byte for Prometheus' sake.  A scrape reads the figures of every
process that relays (:func:`ocsbal._report.figures`), gathered for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ocsbal._pool import AdminState

if TYPE_CHECKING:
    from ocsbal._pool import RunningPool


#: The figures of a server's connections, each a family of its own.
_CONNECTION_FIGURES = ("active", "total", "sent", "received", "registrations")


class PoolCollector(Collector):
    """Collects the metrics of pools' servers and listeners, one family each.

    :param pools: each pool's servers (their configuration and state) and
        the figures of their connections (:func:`ocsbal._report.figures`).
    """

    def __init__(self, pools: Sequence[tuple[RunningPool, dict[str, Any]]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family, labelled by pool and server or port."""
        families: dict[str, Metric] = {}
        for servers, counted in self.pools:
            for family in _Pool(servers, counted).collect():
                if family.name in families:
                    families[family.name].samples += family.samples
                else:
                    families[family.name] = family
        yield from families.values()


class _Pool:
    """The metric families of one pool."""

    def __init__(self, servers: RunningPool, counted: dict[str, Any]) -> None:
        self.servers = servers
        self.counted = counted

    def collect(self) -> Iterator[Metric]:
        pool = self.servers.pool.name
        server = ["pool", "server"]
        # A server being removed is counted under its name until its last
        # connection closes, so that the servers add up to the listeners.
        connections = [*server, "removed"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily(
                "ocsbal_server_up",
                "Whether the server passes its health checks.",
                labels=server,
            ),
            "weight": GaugeMetricFamily(
                "ocsbal_server_weight", "The server's configured weight.", labels=server
            ),
            "effective_weight": GaugeMetricFamily(
                "ocsbal_server_effective_weight",
                "The weight the server is ranked by: less than its weight in slow "
                "start.",
                labels=server,
            ),
            "active": GaugeMetricFamily(
                "ocsbal_server_active_connections",
                "Connections to the server open or being opened.",
                labels=connections,
            ),
            "total": CounterMetricFamily(
                "ocsbal_server_connections",
                "Connections relayed to the server.",
                labels=connections,
            ),
            "sent": CounterMetricFamily(
                "ocsbal_server_sent_bytes",
                "Bytes relayed to the server.",
                labels=connections,
            ),
            "received": CounterMetricFamily(
                "ocsbal_server_received_bytes",
                "Bytes relayed from the server.",
                labels=connections,
            ),
            "moved": CounterMetricFamily(
                "ocsbal_server_moved_connections",
                "Connections closed at a quiet moment to move their clients to "
                "another server: off a drained server, or to rebalance.",
                labels=server,
            ),
            "registrations": GaugeMetricFamily(
                "ocsbal_server_registrations",
                "SIP addresses of record registered over the server's "
                "connections, not expired yet.",
                labels=connections,
            ),
        }
        state = GaugeMetricFamily(
            "ocsbal_server_admin_state",
            "1 for the server's admin state (ready, drain or maint).",
            labels=[*server, "state"],
        )
        checks = CounterMetricFamily(
            "ocsbal_health_checks",
            "Health checks of the server, by result (ok or failed).",
            labels=[*server, "result"],
        )
        failures = CounterMetricFamily(
            "ocsbal_server_connect_failures",
            "Client connections' attempts to reach the server that failed, by "
            "reason (refused, timeout, unreachable, tls, closed, other).",
            labels=[*server, "reason"],
        )
        counted = self.counted["servers"]
        for backend in self.servers.backends.values():
            labels = [pool, backend.name]
            counts = counted.get(backend.name, {})
            families["up"].add_metric(labels, backend.health.up)
            families["weight"].add_metric(labels, backend.server.weight)
            families["effective_weight"].add_metric(labels, backend.weight)
            families["moved"].add_metric(labels, counts.get("moved", 0))
            for key in _CONNECTION_FIGURES:
                families[key].add_metric([*labels, "no"], counts.get(key, 0))
            for admin in AdminState:
                state.add_metric([*labels, admin.value], admin is backend.state)
            checks.add_metric([*labels, "ok"], backend.health.passed)
            checks.add_metric([*labels, "failed"], backend.health.failed)
            for reason, count in sorted(counts.get("connect_failures", {}).items()):
                failures.add_metric([*labels, reason], count)
        for name, counts in sorted(self.counted["leaving"].items()):
            for key in _CONNECTION_FIGURES:
                families[key].add_metric([pool, name, "yes"], counts[key])
        yield from families.values()
        yield from (state, checks, failures)
        yield from self._listeners(pool)

    def _listeners(self, pool: str) -> Iterator[Metric]:
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
        ports = self.counted["ports"]
        for port in self.servers.pool.ports:
            values = [pool, str(port.number), port.protocol.value]
            counts = ports.get(str(port.number), {})
            active.add_metric(values, counts.get("active", 0))
            accepted.add_metric(values, counts.get("accepted", 0))
            rejected.add_metric(values, counts.get("rejected", 0))
        yield from (active, accepted, rejected)
        limited = CounterMetricFamily(
            "ocsbal_limited_connections",
            "Client connections refused by a limit, by limit.",
            labels=["pool", "limit"],
        )
        for limit, count in sorted(self.counted["limited"].items()):
            limited.add_metric([pool, limit], count)
        yield limited
        pauses = CounterMetricFamily(
            "ocsbal_accept_pauses",
            "Times a process stopped accepting while it connected as many "
            "clients as it takes at once.",
            labels=["pool"],
        )
        pauses.add_metric([pool], self.counted.get("accept_pauses", 0))
        yield pauses
        yield from self._sip(pool)

    def _sip(self, pool: str) -> Iterator[Metric]:
        tally = self.counted["sip"]
        for name, documentation, label, counts in [
            ("requests", "SIP requests seen, by method.", "method", tally["requests"]),
            (
                "responses",
                "SIP responses seen, by class.",
                "class",
                tally["responses"],
            ),
            (
                "keepalives",
                "SIP keep-alives seen: client pings and server pongs.",
                "kind",
                tally["keepalives"],
            ),
            (
                "inspections_given_up",
                "SIP connections no longer inspected (relayed as plain TCP), "
                "by reason.",
                "reason",
                tally["gave_up"],
            ),
        ]:
            family = CounterMetricFamily(
                f"ocsbal_sip_{name}", documentation, labels=["pool", label]
            )
            for value, count in sorted(counts.items()):
                family.add_metric([pool, value], count)
            yield family


class WorkersCollector(Collector):
    """Collects the figures of the processes that relay pools' connections.

    :param pools: each pool's name and its processes, as ``/api/workers``
        lists them.
    """

    def __init__(self, pools: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
        self.pools = pools

    def collect(self) -> Iterator[Metric]:
        """Yield the connections, restarts and start time of each worker."""
        labels = ["pool", "worker", "pid", "generation"]
        connections = GaugeMetricFamily(
            "ocsbal_worker_connections",
            "Client connections the worker holds.",
            labels=labels,
        )
        restarts = CounterMetricFamily(
            "ocsbal_worker_restarts",
            "Times this worker's place was taken by a new process after it died.",
            labels=labels,
        )
        started = GaugeMetricFamily(
            "ocsbal_worker_start_time_seconds",
            "When the worker started, in seconds since the epoch.",
            labels=labels,
        )
        for pool, workers in self.pools:
            for worker in workers:
                values = [
                    pool,
                    *(str(worker[k]) for k in ("worker", "pid", "generation")),
                ]
                connections.add_metric(values, worker["connections"])
                restarts.add_metric(values, worker["restarts"])
                started.add_metric(values, worker["started"])
        yield from (connections, restarts, started)
