"""The idle sweep: which connections to close, which to abort, which lapses to tell.

A read stamps the time and nothing more (see :mod:`ocsbal._idle`).  Every
``sweep_interval`` seconds :func:`sweep` looks at the connections that have
read nothing for the idle timeout.  Bytes a peer takes out of the buffers
are activity too, but show only there: the sweep compares what waits for
the peers with what waited when it last looked (:func:`look`), and watches
at every sweep the connections it found with bytes waiting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocsbal._idle import IdleTimeout

if TYPE_CHECKING:
    from ocsbal._relay import Relay, Splice

__all__ = ["PROGRESS_WINDOW", "closing_time", "idle", "look", "stuck", "sweep"]

#: Bytes waiting for a peer must stay as they are this long, in seconds,
#: before their connection counts as idle: what a slow reader takes shows
#: only when the sweep looks, and one sweep may be a twentieth of a second.
PROGRESS_WINDOW = 1.0

#: The line of a connection the sweep closes, by cause.
_CLOSING = {
    "idle-timeout": "closing idle connection from {client} on port {port} "
    "(server {server})",
    "registration-expired": "closing connection from {client} on port {port} "
    "(server {server}): its registration was not refreshed",
}


def sweep(relay: Relay) -> None:
    """Close the connections that have been idle too long.

    A connection is idle once nothing has moved for the idle timeout: no
    byte read, and none taken by a peer (see :func:`idle`).  One carrying a
    live SIP registration is kept until its expiry plus the grace, however
    long that is; one whose registration missed its refresh by the grace is
    reported, once for each lapse, and closed if the pool says to reap it.

    A connection being closed whose peers have taken nothing for the idle
    timeout is aborted (:func:`stuck`).
    """
    now = relay.reactor.seconds()
    pool = relay.pool
    rule = IdleTimeout(pool.idle_timeout)
    for splice in list(relay.draining):
        look(splice, now)
    aborting = [
        s for s in rule.expired(relay.flushing, now) if stuck(s, now, rule.timeout)
    ]
    #: What the sweep closes, and why.
    expiring: dict[Splice, str] = {}
    for splice in rule.expired(relay.splices, now):
        if splice.closing:
            if stuck(splice, now, rule.timeout):
                aborting.append(splice)
        elif splice.sip is not None and closing_time(splice)[0] > now:
            continue  # its registration keeps it
        elif idle(splice, now):
            expiring[splice] = "idle-timeout"
    grace = pool.registration_grace
    for splice in relay.splices:
        if splice.sip is None:
            continue
        if splice.sip.lapsed(now, grace):
            relay.log.warn(
                "connection from {peer} missed its registration refresh "
                "({aors}) by more than {grace:g} s",
                peer=splice.client_name,
                aors=", ".join(splice.sip.bindings),
                grace=grace,
            )
        if (
            pool.reap_expired
            and not splice.closing
            and splice.sip.missed_refresh(now, grace)
        ):
            expiring[splice] = "registration-expired"
    for splice in aborting:
        splice.abort()
    for splice, cause in expiring.items():
        server = "none" if splice.backend is None else splice.backend.name
        relay.log.info(
            _CLOSING[cause],
            kind=(splice.port.number, server, cause),
            client=splice.client_name,
            port=splice.port.number,
            server=server,
        )
        splice.close(cause)


def closing_time(splice: Splice) -> tuple[float, str]:
    """When the sweep closes ``splice`` if it stays as it is, and why then.

    See :meth:`IdleTimeout.closing`.
    """
    pool = splice.relay.pool
    return IdleTimeout(pool.idle_timeout).closing(
        splice.last_activity,
        None if splice.sip is None else splice.sip.expiry,
        pool.registration_grace,
        pool.reap_expired,
    )


def look(splice: Splice, now: float) -> float | None:
    """How long what waits for the peers has stayed as it is.

    ``None`` if nothing waits.  Bytes a peer takes out of the buffers
    show only when the sweep looks: from the first look that finds
    bytes waiting, the relay watches the connection at every sweep, and
    bytes taken since the last look are activity, stamped now.  The
    first look has nothing to compare with: the time counts from it.
    """
    relay = splice.relay
    unsent = sum(
        relay.unsent(side.transport)
        for side in (splice.client, splice.server)
        if side is not None and not side.lost
    )
    watched = splice in relay.draining
    if unsent != splice.unsent_seen or not watched:
        if watched:
            splice.last_activity = now  # a peer took bytes since the last look
        splice.unsent_seen, splice.still_since = unsent, now
    if not unsent:
        relay.draining.discard(splice)
        return None
    relay.draining.add(splice)
    return now - splice.still_since


def idle(splice: Splice, now: float) -> bool:
    """Whether nothing has moved here for long enough to close it.

    The sweep asks once no byte has been read for the idle timeout;
    then nothing must wait for a peer, or what waits must have stayed
    as it is for :data:`PROGRESS_WINDOW`.
    """
    still = look(splice, now)
    return still is None or still >= PROGRESS_WINDOW


def stuck(splice: Splice, now: float, timeout: float) -> bool:
    """Whether this closing connection's peers took nothing for ``timeout``.

    Then it is aborted: a reset is for a peer that takes nothing.
    """
    still = look(splice, now)
    return still is None or still >= timeout
