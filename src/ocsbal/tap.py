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

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorThreads
from twisted.python import usage

from ocsbal._control import ControlService
from ocsbal._network import NetworkSetupError, check_network, check_ports_free
from ocsbal._site import load_pools, state_file
from ocsbal._tls import tls_problems
from ocsbal.config import ConfigError, Pool
from ocsbal.service import ConfigReloader, PoolService


class Options(usage.Options):
    """Command-line options of ``twistd ocsbal``.

    ``--config`` may be given more than once: the daemon then serves every
    pool, with one admin interface (:mod:`ocsbal._site`).
    """

    synopsis = "--config POOL.INI [--config POOL.INI ...] [--grace SECONDS]"
    longdesc = (
        "Balance Office Communications Server pools' VIP ports over their "
        "servers, each pool described by an INI file (see "
        "docs/configuration.md)."
    )
    optParameters = [  # noqa: RUF012 -- usage.Options reads this class attribute
        [
            "grace",
            "g",
            0.0,
            "Seconds open connections may run on at shutdown before they are closed.",
            float,
        ],
    ]

    pool: Pool
    pools: list[Pool]

    def __init__(self) -> None:
        super().__init__()
        self["configs"] = []
        self["config"] = None

    def opt_config(self, path: str) -> None:
        """A pool's INI configuration file; repeat it for several pools."""
        self["configs"].append(path)
        if self["config"] is None:
            self["config"] = path

    opt_c = opt_config

    def postOptions(self) -> None:
        """Load and validate the configuration files, together."""
        if not self["configs"]:
            raise usage.UsageError("--config is required")
        if self["grace"] < 0:
            raise usage.UsageError("--grace must be 0 or more seconds")
        try:
            self.pools = load_pools(self["configs"], tls_problems)
        except ConfigError as e:
            raise usage.UsageError(f"invalid configuration:\n{e}") from e
        self.pool = self.pools[0]
        try:
            for pool in self.pools:
                check_network(pool)
                check_ports_free(pool)
        except NetworkSetupError as e:
            raise usage.UsageError(str(e)) from e


def worker_count(pool: Pool) -> int:
    """How many processes relay ``pool``: ``[pool] workers``, or one a core."""
    if pool.workers is not None:
        return pool.workers
    return len(os.sched_getaffinity(0))


def makeService(options: Options) -> IService:
    """Build the service of the pools described by the parsed options.

    Each pool is relayed by a control process
    (:class:`~ocsbal._control.ControlService`) that spawns its workers when
    it has more than one (:func:`worker_count`), else by a
    :class:`PoolService`.  With several pools, they are children of one
    service, and the admin interface of the pool whose file has it serves
    them all.  The files are reloaded on SIGHUP.  The objects loaded until
    then are frozen out of the garbage collector's passes (:func:`gc.freeze`).
    """
    from twisted.internet import reactor

    services = [
        _relaying(pool, path, options["grace"])
        for path, pool in zip(options["configs"], options.pools, strict=True)
    ]
    service: MultiService = services[0]
    if len(services) > 1:
        service = MultiService()
        for each in services:
            each.setServiceParent(service)
        interface = next((s.admin for s in services if s.admin is not None), None)
        if interface is not None:
            for each in services:
                if each.admin is None:
                    interface.serve(each)
    reloader = ConfigReloader(
        options["configs"][0], services[0], cast(IReactorThreads, reactor)
    )
    for path, each in zip(options["configs"][1:], services[1:], strict=True):
        reloader.add(path, each)
    reloader.setServiceParent(service)
    # Everything loaded so far lives as long as the process: out of the
    # collector's sight, its full passes no longer walk the tens of
    # thousands of objects of Twisted and the rest, which stalled the relay
    # for 10 to 40 ms (p99 latency added at a fixed rate: about 24 ms before,
    # 3 ms after, in make bench).
    gc.freeze()
    return service


def _relaying(pool: Pool, path: str, grace: float) -> PoolService:
    """The service relaying ``pool``, read from ``path``."""
    workers = worker_count(pool)
    kept_in = state_file(path, pool)
    if workers > 1:
        return ControlService(pool, workers, grace_period=grace, state_file=kept_in)
    return PoolService(pool, grace_period=grace, state_file=kept_in)
