"""Schedulers: which server of a pool gets the next connection.

A scheduler is a small stateful object, one per pool, with one method,
:meth:`IScheduler.pick`.  The balancer calls it once per accepted connection
with the servers that may take it: those that are up, not draining and not
already tried for this connection.  Anything with a ``name``, a ``weight`` and
an ``active`` connection count will do as a :class:`Candidate`, so tools can
drive a scheduler with :class:`ServerLoad` and no balancer or reactor at all::

    from ocsbal.scheduling import ServerLoad, WeightedRoundRobin

    servers = [ServerLoad("fe1", weight=5), ServerLoad("fe2"), ServerLoad("fe3")]
    wrr = WeightedRoundRobin()
    [wrr.pick(servers).name for _ in range(7)]
    # ['fe1', 'fe1', 'fe2', 'fe1', 'fe3', 'fe1', 'fe1']

Every scheduler here shares three rules:

- a candidate of weight 0 is never picked, and :exc:`NoServerAvailable` is
  raised when nothing else is left;
- the candidate list may change between calls (servers added, removed,
  reweighted, down, or excluded for one connection), so state is keyed by
  server name and never by position;
- state for names that have gone away is dropped, so it does not grow with
  the names that come and go.

This module does no I/O and imports nothing from :mod:`twisted.internet`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol, TypeVar

import attrs
from zope.interface import Interface, implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass

__all__ = [
    "SCHEDULERS",
    "Candidate",
    "IScheduler",
    "LeastConnections",
    "NoServerAvailable",
    "RoundRobin",
    "ServerLoad",
    "WeightedLeastConnections",
    "WeightedRoundRobin",
    "scheduler_class",
]


class Candidate(Protocol):
    """A server as a scheduler sees it.

    The balancer's own run-time server objects satisfy this protocol;
    :class:`ServerLoad` is a stand-alone one.
    """

    @property
    def name(self) -> str:
        """The server's name, unique within its pool."""

    @property
    def weight(self) -> int:
        """The server's relative capacity; 0 means never pick it."""

    @property
    def active(self) -> int:
        """Connections to this server that the balancer counts as open."""


_C = TypeVar("_C", bound=Candidate)


@attrs.define
class ServerLoad:
    """A :class:`Candidate` that is plain data, for tools and tests.

    :param name: the server's name.
    :param weight: the server's relative capacity; 0 means never pick it.
    :param active: connections currently open to the server.
    """

    name: str
    weight: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    active: int = attrs.field(default=0, validator=attrs.validators.ge(0))


# The name is part of the fixed API that the balancer and tools import.
class NoServerAvailable(Exception):  # noqa: N818
    """No candidate can be picked: there are none, or all have weight 0.

    The message says which, for the balancer's log line.
    """


def _nothing_to_pick(candidates: Sequence[Candidate]) -> NoServerAvailable:
    count = len(candidates)
    if count == 0:
        return NoServerAvailable("no server available: no candidates")
    if count == 1:
        return NoServerAvailable("no server available: 1 candidate, with weight 0")
    return NoServerAvailable(
        f"no server available: {count} candidates, all with weight 0"
    )


class IScheduler(Interface):
    """Chooses the server for each new connection of a pool.

    An implementation keeps whatever state it needs between calls, keyed by
    :attr:`Candidate.name`, and must not let state for names that no longer
    appear grow without bound.  It must be constructible with no arguments
    to be named in a configuration file.
    """

    def pick(candidates: Sequence[Candidate]) -> Candidate:
        """Choose the server for one new connection.

        :param candidates: the servers that may take it, in pool order.  The
            caller has already left out servers that are down, draining or
            already tried for this connection.  The list may differ from one
            call to the next.
        :return: the chosen element of ``candidates`` itself, never one of
            weight 0.
        :raise NoServerAvailable: when ``candidates`` is empty or every
            candidate has weight 0.
        """


@attrs.define
class _Cursor:
    """Where a rotation stands: just after the name it picked last.

    Positions in the candidate list shift whenever a server is added,
    removed or excluded, so the cursor remembers the *name* it picked and the
    order of names it picked it from.  When that name has vanished from the
    list, the rotation resumes at the first name that followed it and is
    still present, so no server in between is skipped or served twice.
    """

    _name: str | None = None
    _order: tuple[str, ...] = ()

    def start(self, candidates: Sequence[Candidate]) -> int:
        """Return the index at which the next scan of ``candidates`` begins.

        :param candidates: this call's candidates.
        """
        name = self._name
        count = len(candidates)
        if name is None or count == 0:
            return 0
        for i in range(count):
            if candidates[i].name == name:
                return i + 1 if i + 1 < count else 0
        # Rare path (the last pick went down or failed): allocating here
        # keeps the common path free of allocations.
        where = {c.name: i for i, c in enumerate(candidates)}
        order = self._order
        at = order.index(name)
        for following in order[at + 1 :] + order[:at]:
            i_following = where.get(following)
            if i_following is not None:
                return i_following
        return 0

    def picked(self, candidates: Sequence[Candidate], index: int) -> None:
        """Remember that ``candidates[index]`` was just picked.

        :param candidates: this call's candidates.
        :param index: the position of the pick in ``candidates``.
        """
        self._name = candidates[index].name
        order = self._order
        # Copy the names only when the list changed, so a stable pool costs
        # no allocation per pick.
        if len(order) == len(candidates):
            for i in range(len(order)):
                if order[i] != candidates[i].name:
                    break
            else:
                return
        self._order = tuple(c.name for c in candidates)


@implementer(IScheduler)
@attrs.define(eq=False)
class RoundRobin:
    """Take the candidates in turn, ignoring weights other than 0.

    Each pick is the first candidate of non-zero weight after the one picked
    last, in list order, wrapping around.  Turns follow names, not positions:
    if servers come or go, the rotation carries on after the name it picked
    last, so while a server stays available, no other server is picked twice
    before it is picked once.
    """

    _cursor: _Cursor = attrs.field(init=False, factory=_Cursor, repr=False)

    def pick(self, candidates: Sequence[_C]) -> _C:
        """Choose the next candidate in turn; see :meth:`IScheduler.pick`.

        :param candidates: the servers that may take the connection.
        """
        count = len(candidates)
        start = self._cursor.start(candidates)
        for k in range(count):
            i = start + k
            if i >= count:
                i -= count
            if candidates[i].weight > 0:
                self._cursor.picked(candidates, i)
                return candidates[i]
        raise _nothing_to_pick(candidates)


class _Credit:
    """One server's running credit in :class:`WeightedRoundRobin`."""

    __slots__ = ("current", "seen")

    def __init__(self) -> None:
        self.current = 0
        #: The pick number at which the server was last a candidate.
        self.seen = 0


#: A name absent from the candidates for this many picks in a row loses its
#: :class:`WeightedRoundRobin` credit, and starts afresh if it comes back.
#: Short absences (one connection's retry, a brief outage) keep it, as nginx
#: does, so the server is neither favoured nor penalised on its return.
_FORGET_AFTER = 1000


@implementer(IScheduler)
@attrs.define(eq=False)
class WeightedRoundRobin:
    """Smooth weighted round robin, exactly as nginx does it.

    Each server holds a running credit, initially 0.  On each pick, every
    candidate of non-zero weight gains its weight; the candidate with the
    most credit wins (the first in list order on a tie) and gives back the
    total weight of this pick's candidates.  With a fixed list, any
    ``sum(weights)`` consecutive picks choose each server exactly ``weight``
    times, and the heaviest server's turns are spread out instead of coming
    in one burst: weights 5, 1, 1 give ``a a b a c a a``.

    Credit is kept by name.  A server that is added starts at 0; one absent
    for a while keeps its credit until it returns.  A name absent for 1000
    picks in a row is forgotten (within another 1000 picks), and starts at 0
    again if it comes back.
    """

    _credits: dict[str, _Credit] = attrs.field(init=False, factory=dict, repr=False)
    _picks: int = attrs.field(init=False, default=0, repr=False)
    _swept_at: int = attrs.field(init=False, default=0, repr=False)

    def pick(self, candidates: Sequence[_C]) -> _C:
        """Choose the candidate with the most credit; see :meth:`IScheduler.pick`.

        :param candidates: the servers that may take the connection.
        """
        self._picks += 1
        tick = self._picks
        credits = self._credits
        total = 0
        eligible = 0
        best: _C | None = None
        best_credit: _Credit | None = None
        for candidate in candidates:
            weight = candidate.weight
            if weight <= 0:
                continue
            credit = credits.get(candidate.name)
            if credit is None:
                credit = credits[candidate.name] = _Credit()
            credit.current += weight
            credit.seen = tick
            total += weight
            eligible += 1
            if best_credit is None or credit.current > best_credit.current:
                best, best_credit = candidate, credit
        if best is None or best_credit is None:
            raise _nothing_to_pick(candidates)
        best_credit.current -= total
        if len(credits) > eligible and tick - self._swept_at >= _FORGET_AFTER:
            self._forget(tick)
        return best

    def _forget(self, tick: int) -> None:
        # Sweeping at most once per _FORGET_AFTER picks keeps the cost
        # amortised O(1), and bounds how long a vanished name lingers to
        # 2 * _FORGET_AFTER picks.
        stale = tick - _FORGET_AFTER
        self._credits = {n: c for n, c in self._credits.items() if c.seen > stale}
        self._swept_at = tick


def _least(candidates: Sequence[_C], cursor: _Cursor, *, weighted: bool) -> _C:
    """Pick the least loaded candidate, rotating among ties.

    The scan starts just after the previous pick, and only a strictly
    smaller load replaces the best so far, so among equally loaded servers
    the next one in turn wins: idle servers share out new connections
    instead of the first one in the list taking them all.
    """
    count = len(candidates)
    start = cursor.start(candidates)
    best_index = -1
    best_active = 0
    best_weight = 1
    for k in range(count):
        i = start + k
        if i >= count:
            i -= count
        candidate = candidates[i]
        weight = candidate.weight
        if weight <= 0:
            continue
        if not weighted:
            weight = 1
        active = candidate.active
        # active/weight < best_active/best_weight, in exact integers: floats
        # would round near-equal ratios and break ties arbitrarily.
        if best_index < 0 or active * best_weight < best_active * weight:
            best_index, best_active, best_weight = i, active, weight
    if best_index < 0:
        raise _nothing_to_pick(candidates)
    cursor.picked(candidates, best_index)
    return candidates[best_index]


@implementer(IScheduler)
@attrs.define(eq=False)
class LeastConnections:
    """Pick the candidate with the fewest active connections.

    Weights other than 0 are ignored.  Among candidates equally loaded, the
    pick rotates as :class:`RoundRobin` does, starting after the previous
    pick.
    """

    _cursor: _Cursor = attrs.field(init=False, factory=_Cursor, repr=False)

    def pick(self, candidates: Sequence[_C]) -> _C:
        """Choose the least loaded candidate; see :meth:`IScheduler.pick`.

        :param candidates: the servers that may take the connection.
        """
        return _least(candidates, self._cursor, weighted=False)


@implementer(IScheduler)
@attrs.define(eq=False)
class WeightedLeastConnections:
    """Pick the candidate with the fewest active connections per unit of weight.

    This is IPVS's ``wlc``: the candidate minimising ``active / weight``,
    compared exactly as ``a.active * b.weight < b.active * a.weight``.  Among
    candidates equally loaded, the pick rotates as :class:`RoundRobin` does,
    starting after the previous pick.
    """

    _cursor: _Cursor = attrs.field(init=False, factory=_Cursor, repr=False)

    def pick(self, candidates: Sequence[_C]) -> _C:
        """Choose the least loaded candidate per weight; see :meth:`IScheduler.pick`.

        :param candidates: the servers that may take the connection.
        """
        return _least(candidates, self._cursor, weighted=True)


#: The built-in schedulers by the names the configuration's ``scheduler``
#: key accepts.  Read-only: a custom scheduler is named by import path.
SCHEDULERS: Mapping[str, type] = MappingProxyType(
    {
        "round-robin": RoundRobin,
        "weighted-round-robin": WeightedRoundRobin,
        "least-connections": LeastConnections,
        "weighted-least-connections": WeightedLeastConnections,
    }
)

_CUSTOM = "package.module:ClassName"
_ALLOWED = " | ".join([*SCHEDULERS, _CUSTOM])
_INTERFACE = f"{IScheduler.__module__}.{IScheduler.__name__}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _is_dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def scheduler_class(spec: str) -> type:
    """Return the scheduler class a configuration names.

    :param spec: one of the keys of :data:`SCHEDULERS`, or
        ``package.module:ClassName`` for a class, importable from
        ``sys.path``, that implements :class:`IScheduler` and is
        constructible with no arguments.
    :return: the class; call it to get a scheduler for one pool.
    :raise ValueError: with a one-line message saying what is wrong with
        ``spec`` and what is allowed.
    """
    builtin = SCHEDULERS.get(spec)
    if builtin is not None:
        return builtin
    if ":" not in spec:
        # A dotted name is most likely a custom class missing its colon.
        hint = " (a colon separates the module from the class)" if "." in spec else ""
        raise ValueError(f"unknown scheduler {spec!r}; allowed: {_ALLOWED}{hint}")
    module_name, _, class_name = spec.partition(":")
    if not (_is_dotted_name(module_name) and class_name.isidentifier()):
        raise ValueError(f"invalid scheduler {spec!r}; expected {_CUSTOM}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r}: {_one_line(e)}") from e
    except Exception as e:  # a module's code may raise anything on import
        raise ValueError(
            f"cannot import module {module_name!r}: {type(e).__name__}: {_one_line(e)}"
        ) from e
    try:
        found = getattr(module, class_name)
    except AttributeError:
        raise ValueError(
            f"cannot find {spec}: module {module_name!r} has no attribute "
            f"{class_name!r}"
        ) from None
    if not isinstance(found, type):
        raise ValueError(
            f"{spec} is a {type(found).__name__}, not a class implementing {_INTERFACE}"
        )
    if not IScheduler.implementedBy(found):
        raise ValueError(
            f"{spec} does not implement {_INTERFACE}; declare it with "
            "@zope.interface.implementer(IScheduler)"
        )
    try:
        verifyClass(IScheduler, found)
    except Invalid as e:
        raise ValueError(
            f"{spec} does not implement {_INTERFACE} correctly: {_one_line(e)}"
        ) from e
    try:
        signature = inspect.signature(found)
    except ValueError:  # some C types have no signature; nothing to check
        return found
    try:
        signature.bind()
    except TypeError as e:
        raise ValueError(
            f"{spec} must be constructible with no arguments: {_one_line(e)}"
        ) from e
    return found
