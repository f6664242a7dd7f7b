"""Moves with real SIP peers, run by test_move_kamailio.py and, larger, by
bench/moves.py: users (:mod:`sip_users`) registered through ``twistd -n
ocsbal`` (two workers) to two Kamailio registrars (:mod:`kamailio`).

Each scenario returns what happened; its callers judge it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
from harness import WAIT, Launcher, Process, admin_call, pool_ini
from kamailio import registrars, requests, start_registrar
from sip_users import User, users

PORTS = {5060: "sip"}


@attrs.frozen
class Setup:
    """The addresses of a scenario, in 127.0.``block``.0/24."""

    block: int

    @property
    def vip(self) -> tuple[str, int]:
        return f"127.0.{self.block}.10", 5060

    @property
    def admin(self) -> str:
        return f"127.0.{self.block}.1:19900"

    def registrar(self, name: str) -> str:
        return f"127.0.{self.block}.{10 + int(name[-1])}"

    def ini(self, **pool: object) -> str:
        servers = {name: (self.registrar(name), 1) for name in ("kam1", "kam2")}
        ini = pool_ini(self.vip[0], servers, PORTS, workers=2, **pool)
        ini += "\n[monitor]\nports = 5060\ninterval = 1\ntimeout = 0.5\nrise = 1\n"
        ini += f"\n[admin]\nlisten = tcp:19900:interface=127.0.{self.block}.1\n"
        return ini + "\n[log]\nconnections = yes\n"

    def server(self, name: str) -> dict[str, Any]:
        """``/api/servers/NAME``."""
        _, report = admin_call(self.admin, "GET", f"/api/servers/{name}")
        return dict(report)


@attrs.frozen
class Outcome:
    """What a scenario saw.

    :ivar users: every user, with all it saw.
    :ivar began: when the move began (the drain; the registrar seen up).
    :ivar registered: the REGISTERs kam2 logged, by user.
    :ivar balancer: the balancer's log, once stopped.
    :ivar seen: figures read from the admin API along the way.
    """

    users: list[User]
    began: float
    registered: Counter[str]
    balancer: str
    seen: dict[str, Any]

    @property
    def moved(self) -> list[User]:
        return [u for u in self.users if u.closes]

    @property
    def moved_at(self) -> list[float]:
        """Seconds from :attr:`began` to each move, in order."""
        return sorted(c.at - self.began for u in self.users for c in u.closes)

    @property
    def cut(self) -> list[str]:
        """What the balancer cut by closing: calls, requests unanswered."""
        return [
            f"u{user.n}: {'a call' if close.in_call else ''} {close.waiting}"
            for user in self.users
            for close in user.closes
            if close.in_call or close.waiting
        ]

    @property
    def errors(self) -> list[str]:
        return [u.error for u in self.users if u.error]

    def registered_again(self) -> list[float]:
        """Seconds from each move to the user's next registration (none for a
        user stopped in between)."""
        return [
            again.at - close.at
            for user in self.moved
            for close, again in zip(user.closes, user.registrations[1:], strict=False)
        ]

    @property
    def landed(self) -> Counter[tuple[str, ...]]:
        """Where the moved users registered, in turn: ``("kam1", "kam2")``..."""
        return Counter(
            tuple(r.server for r in user.registrations) for user in self.moved
        )


def finished(
    everyone: list[User],
    began: float,
    kam2: Process,
    balancer: Process,
    seen: dict[str, Any],
) -> Outcome:
    """Stop the balancer; what the scenario saw, kam2's log and the balancer's."""
    balancer.stop()
    return Outcome(everyone, began, requests(kam2, "REGISTER"), balancer.output, seen)


def wait_until(condition: Callable[[], bool], what: str, within: float = WAIT) -> float:
    """Poll ``condition()`` until true; return when it became so."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)
    return time.monotonic()


def ready(setup: Setup, name: str) -> None:
    """Make ``name`` ready again, and wait until it is up."""
    admin_call(setup.admin, "PATCH", f"/api/servers/{name}", {"state": "ready"})
    wait_until(lambda: setup.server(name)["health"] == "up", f"{name} up")


def drain(
    launch: Launcher,
    setup: Setup,
    *,
    count: int,
    window: float,
    calls: int,
    askers: int,
) -> Outcome:
    """Everyone registered on kam1; drain it with ``move_within`` ``window``.

    The first ``calls`` users are in a call, the first half of them hanging
    up 4 s into the window, the rest after it; the next ``askers`` wait for
    an answer (2-3 s) when the drain begins.
    """
    addresses = {name: setup.registrar(name) for name in ("kam1", "kam2")}
    with registrars(launch, addresses) as kamailios:
        balancer = launch.balancer(setup.ini())
        admin_call(setup.admin, "PATCH", "/api/servers/kam2", {"state": "maint"})
        with users(count, setup.vip) as everyone:
            seen: dict[str, Any] = {"servers": Counter(u.server for u in everyone)}
            callers, asking = everyone[:calls], everyone[calls : calls + askers]
            for user in callers:
                user.call()
            wait_until(lambda: all(u.in_call for u in callers), "calls up")
            ready(setup, "kam2")
            for user in asking:
                user.ask()
            wait_until(lambda: all(u.busy for u in asking), "asked")
            status, seen["drained"] = admin_call(
                setup.admin,
                "PATCH",
                "/api/servers/kam1",
                {"state": "drain", "move_within": window},
            )
            assert status == 200, seen["drained"]
            began = time.monotonic()
            time.sleep(4)
            for user in callers[: calls // 2]:
                user.hang_up()
            time.sleep(window - 4 + 2)
            seen["after"] = setup.server("kam1")
            seen["calls_after"] = [(u.closes, u.server) for u in callers[calls // 2 :]]
            for user in callers[calls // 2 :]:
                user.hang_up()
            wait_until(lambda: not any(u.busy for u in callers), "hung up")
            seen["hung_up"] = setup.server("kam1")
        return finished(everyone, began, kamailios["kam2"], balancer, seen)


def rebalance(
    launch: Launcher,
    setup: Setup,
    *,
    count: int,
    rate: float,
    slowstart: float,
) -> Outcome:
    """Everyone registered on kam1 while kam2 is down; then kam2 starts.

    The pool rebalances at ``rate`` with a tolerance of 10 %, and kam2 has
    ``slowstart``.  Ends once the moves are done.
    """
    ini = setup.ini(
        rebalance="yes",
        rebalance_rate=rate,
        rebalance_tolerance=10,
        slowstart=slowstart,
    )
    with registrars(launch, {"kam1": setup.registrar("kam1")}) as kamailios:
        balancer = launch.balancer(ini)
        wait_until(lambda: setup.server("kam2")["health"] == "down", "kam2 down")
        with users(count, setup.vip) as everyone:
            seen: dict[str, Any] = {"servers": Counter(u.server for u in everyone)}
            time.sleep(2)  # kam2 down: nothing moves
            seen["moved_while_down"] = sum(len(u.closes) for u in everyone)
            kamailios["kam2"] = start_registrar(launch, "kam2", setup.registrar("kam2"))
            began = wait_until(lambda: setup.server("kam2")["health"] == "up", "up")
            time.sleep(slowstart + count / 2 / rate + 3)  # and a margin
            seen["active"] = {
                name: setup.server(name)["active"] for name in ("kam1", "kam2")
            }
        return finished(everyone, began, kamailios["kam2"], balancer, seen)
