"""One log event per connection as it closes, with ``[log] connections = yes``.

Each is a structured :mod:`twisted.logger` event in the namespace
``ocsbal.connections``, so that an observer writing JSON gets its fields
(:data:`FIELDS`) as they are, and the text log gets one line::

    client=192.0.2.7:50112 vip_port=5061 server=fe1 connect_ms=0.8
    duration_s=3600.012 up=48213 down=61877 cause=client-closed aor=sip:a@b

(on one line).  ``cause`` is one of :data:`CAUSES`: the first thing that
ended the connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.logger import Logger

__all__ = ["CAUSES", "FIELDS", "FORMAT", "NAMESPACE", "closed"]

#: Why a connection ended, as ``cause`` says it.
CAUSES = {
    "client-closed": "the client closed it",
    "server-closed": "the server closed it",
    "idle-timeout": "nothing passed for the idle timeout",
    "registration-expired": "its registration missed its refresh (reap_expired)",
    "no-server": "no server was available, or this host could reach none",
    "server-down": "every server tried failed to connect",
    "limit": "a maxconn or a [limits] limit refused it",
    "admin": "the operator closed it (a forced removal, a restart's end)",
    "moved": "closed at a quiet moment to move its client: a drain's move, a rebalance",
    "shutdown": "ocsbal stopped",
}

NAMESPACE = "ocsbal.connections"

#: The fields of each event, besides ``aor`` (its registered addresses of
#: record, in the text only when there are some).
FIELDS = (
    "client",
    "vip_port",
    "server",
    "connect_ms",
    "duration_s",
    "up",
    "down",
    "cause",
    "aors",
)

FORMAT = (
    "client={client} vip_port={vip_port} server={server} connect_ms={connect_ms} "
    "duration_s={duration_s} up={up} down={down} cause={cause}{aor}"
)

log = Logger(namespace=NAMESPACE)


def closed(
    *,
    client: str,
    vip_port: int,
    server: str | None,
    connect: float | None,
    duration_s: float,
    up: int,
    down: int,
    cause: str,
    aors: Iterable[str] = (),
) -> None:
    """Log one connection that closed.

    :param server: the server it was relayed to; ``None`` if none.
    :param connect: seconds connecting to the server took; ``None`` if it
        never was.
    """
    registered = list(aors)
    log.info(
        FORMAT,
        client=client,
        vip_port=vip_port,
        server=server or "-",
        connect_ms="-" if connect is None else round(connect * 1e3, 1),
        duration_s=round(duration_s, 3),
        up=up,
        down=down,
        cause=cause,
        aors=registered,
        aor=f" aor={','.join(registered)}" if registered else "",
    )
