"""The one way the unit tests build a pool.

A module rather than a fixture: test helpers and SynchronousTestCase
classes build pools too.
"""

from __future__ import annotations

from typing import Any

from ocsbal.config import Pool, Server

#: The servers of a test pool unless it names its own.
SERVERS = (Server("fe1", "127.0.1.11"), Server("fe2", "127.0.1.12"))


def make_pool(*servers: Server, **kw: Any) -> Pool:
    """A pool of ``servers`` (by default :data:`SERVERS`) behind 127.0.1.10.

    Round robin unless ``kw`` says otherwise, so that tests know who is
    picked next; any other field of :class:`Pool` may be given.
    """
    kw.setdefault("scheduler", "round-robin")
    kw.setdefault("vip", "127.0.1.10")
    return Pool(
        name="pool01", fqdn="pool01.example.com", servers=servers or SERVERS, **kw
    )
