"""Reloading a pool's file on SIGHUP: :class:`ConfigReloader`.

It re-reads the file and hands the pool it describes to whatever runs it
(:class:`Reloadable`: a :class:`~ocsbal.PoolService`), logging a refusal
with its reasons.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger

from ocsbal._model import Pool
from ocsbal._site import load_pools
from ocsbal._token import AdminTokenError
from ocsbal.config import ConfigError

__all__ = ["ConfigReloader", "ReloadError", "Reloadable"]

log = Logger(namespace="ocsbal")


class ReloadError(ValueError):
    """A new configuration asks for a change that needs a restart."""


class Reloadable(Protocol):
    """What a :class:`ConfigReloader` reloads."""

    def reload(self, pool: Pool) -> Deferred[None]:
        """Make ``pool`` the configuration in force, or fail saying why not."""


class ConfigReloader(Service):
    """Re-reads a pool's configuration file on SIGHUP and applies it.

    A file that does not validate, or a change that needs a restart, is
    logged with its reasons and the running configuration stays.  Reloads
    never overlap: a SIGHUP during a reload runs one more reload after it,
    however many arrive.

    With several pools (:meth:`add`), a SIGHUP re-reads every file, and
    their pools are checked together (:func:`ocsbal._site.load_pools`): a
    problem in one refuses the reload of all.

    :param path: the INI file.
    :param pool_service: the service the configuration is applied to.
    :param reactor: where the signal's work is handed over to.
    """

    def __init__(
        self, path: str, pool_service: Reloadable, reactor: IReactorThreads
    ) -> None:
        self.path = path
        self.pool_service = pool_service
        #: Every file reloaded, with its service, in order.
        self.files: list[tuple[str, Reloadable]] = [(path, pool_service)]
        self.reactor = reactor
        self._running = False
        self._again = False
        self._waiting: list[Deferred[None]] = []
        self._previous: Any = signal.SIG_DFL

    def add(self, path: str, pool_service: Reloadable) -> None:
        """Reload ``path`` into ``pool_service`` too, at every SIGHUP."""
        self.files.append((path, pool_service))

    def startService(self) -> None:
        """Reload on SIGHUP from now on."""
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        """Give SIGHUP back to whoever had it."""
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous)

    def _hangup(self, signum: int, frame: object) -> None:  # noqa: ARG002
        # A signal handler may interrupt anything: hand over to the reactor.
        self.reactor.callFromThread(self.reload)

    def reload(self) -> Deferred[None]:
        """Reload now, or once the reload in progress is done.

        The returned Deferred fires when the file as it is now, or as a
        later reload read it, is in force or has been refused; it never
        fails.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        if self._running:
            self._again = True
        else:
            Deferred.fromCoroutine(self._reload())
        return d

    async def _reload(self) -> None:
        self._running = True
        try:
            while True:
                self._again = False
                waiting, self._waiting = self._waiting, []
                await self._once()
                for d in waiting:
                    d.callback(None)
                if not self._again:
                    return
        finally:
            self._running = False

    async def _once(self) -> None:
        paths = [path for path, _ in self.files]
        try:
            pools = load_pools(paths)
        except ConfigError as e:
            self._refused(", ".join(paths), e)
            return
        for (path, service), pool in zip(self.files, pools, strict=True):
            try:
                await service.reload(pool)
            except (ReloadError, AdminTokenError, CannotListenError) as e:
                self._refused(path, e)
            except Exception:
                log.failure("reloading {path} failed unexpectedly", path=path)
            else:
                log.info("reloaded {path}", path=path)

    def _refused(self, path: str, why: Exception) -> None:
        log.error(
            "reloading {path} refused; the running configuration stays:\n{why}",
            path=path,
            why=why,
        )
