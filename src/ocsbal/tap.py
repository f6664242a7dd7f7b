"""The ``twistd ocsbal`` command: options and service maker.

The configuration is loaded and validated while the options are parsed, and
the host checked for what it asks (the VIP, half-NAT's transparent
sockets), so a bad file or host stops ``twistd`` with its problems listed
(exit status 1) before anything is bound or daemonised.
"""

from __future__ import annotations

import gc
import os
from typing import cast

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorThreads
from twisted.python import usage

from ocsbal._control import ControlService
from ocsbal._network import NetworkSetupError, check_network, check_ports_free
from ocsbal._tls import tls_problems
from ocsbal.config import ConfigError, Pool, load
from ocsbal.service import ConfigReloader, PoolService


class Options(usage.Options):
    """Command-line options of ``twistd ocsbal``."""

    synopsis = "--config POOL.INI [--grace SECONDS]"
    longdesc = (
        "Balance an Office Communications Server pool's VIP ports over its "
        "servers, as described by an INI file (see docs/configuration.md)."
    )
    optParameters = [  # noqa: RUF012 -- usage.Options reads this class attribute
        ["config", "c", None, "The pool's INI configuration file."],
        [
            "grace",
            "g",
            0.0,
            "Seconds open connections may run on at shutdown before they are closed.",
            float,
        ],
    ]

    pool: Pool

    def postOptions(self) -> None:
        """Load and validate the configuration file."""
        if self["config"] is None:
            raise usage.UsageError("--config is required")
        if self["grace"] < 0:
            raise usage.UsageError("--grace must be 0 or more seconds")
        try:
            self.pool = load(self["config"], tls_problems)
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration:\n{e}") from e
        try:
            check_network(self.pool)
            check_ports_free(self.pool)
        except NetworkSetupError as e:
            raise usage.UsageError(str(e)) from e


def worker_count(pool: Pool) -> int:
    """How many processes relay ``pool``: ``[pool] workers``, or one a core."""
    if pool.workers is not None:
        return pool.workers
    return len(os.sched_getaffinity(0))


def makeService(options: Options) -> IService:
    """Build the pool service described by the parsed options.

    With more than one worker (:func:`worker_count`), a control process
    (:class:`~ocsbal._control.ControlService`) that spawns them; with one,
    a :class:`PoolService` that relays.  It reloads the configuration file
    on SIGHUP.  The objects loaded until then are frozen out of the garbage
    collector's passes (:func:`gc.freeze`).
    """
    from twisted.internet import reactor

    workers = worker_count(options.pool)
    service: PoolService
    if workers > 1:
        service = ControlService(options.pool, workers, grace_period=options["grace"])
    else:
        service = PoolService(options.pool, grace_period=options["grace"])
    reloader = ConfigReloader(
        options["config"], service, cast(IReactorThreads, reactor)
    )
    reloader.setServiceParent(service)
    # Everything loaded so far lives as long as the process: out of the
    # collector's sight, its full passes no longer walk the tens of
    # thousands of objects of Twisted and the rest, which stalled the relay
    # for 10 to 40 ms (p99 latency added at a fixed rate: about 24 ms before,
    # 3 ms after, in make bench).
    gc.freeze()
    return service
