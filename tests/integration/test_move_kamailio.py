"""Moves with real SIP peers (the scenarios of :mod:`move_scenarios`): users
registered through ``twistd -n ocsbal`` (two workers) to two Kamailio
registrars, some in a call, some waiting for an answer.

- Drain with ``move_within``: every quiet user is moved within the window,
  spread over it, and registers again on the other registrar at once; a
  call is never cut (its connection stays until its BYE is answered, and a
  call still up at the window's end stays); no request is left without its
  answer.
- Rebalance: a registrar that comes back empty gets half of the users, at
  the rate, and none move while it is down or in slow start.
"""

from __future__ import annotations

from collections import Counter

from harness import Launcher
from move_scenarios import Setup, drain, rebalance


def test_drain_moves_every_quiet_user_to_the_other_registrar_over_the_window(
    launch: Launcher,
) -> None:
    window = 10.0
    outcome = drain(launch, Setup(72), count=40, window=window, calls=4, askers=4)
    assert outcome.errors == []
    assert outcome.seen["servers"] == {"kam1": 40}
    # When the drain began: 4 in a call, 4 waiting for an answer.
    assert outcome.seen["drained"]["quiet"] == 32
    # Calls cut, requests left unanswered: none.
    assert outcome.cut == []
    # Every user moved once but the two calls still up, within the window,
    # spread over it (the even rate is 38 over 10 s) ...
    users = outcome.users
    hung_up, still_in_call, askers = users[:2], users[2:4], users[4:8]
    assert outcome.moved == hung_up + users[4:]
    assert all(len(u.closes) == 1 for u in outcome.moved)
    assert outcome.moved_at[-1] <= window + 1, outcome.moved_at
    per_second = Counter(int(at) for at in outcome.moved_at)
    assert max(per_second.values()) <= 2 * 38 / window + 1, per_second
    # ... the busy ones once their answer came ...
    for user in hung_up + askers:
        answer = max(at for at, what in user.answered if what != "200 REGISTER")
        assert user.closes[0].at > answer
    # ... each registered again, on the other registrar, at once.
    assert max(outcome.registered_again()) < 1.0
    assert outcome.landed == {("kam1", "kam2"): 38}
    assert outcome.registered == Counter(f"u{u.n}" for u in outcome.moved)
    # The calls still up at the window's end stay, on kam1, until hung up
    # and after.
    assert outcome.seen["calls_after"] == [([], "kam1")] * 2
    assert outcome.seen["after"]["active"] == 2
    assert outcome.seen["after"]["quiet"] == 0
    assert [u.closes for u in still_in_call] == [[], []]
    assert outcome.seen["hung_up"]["quiet"] == 2
    assert "moved server kam1: 38 connections moved; 2 still busy stay" in (
        outcome.balancer
    )
    assert outcome.balancer.count("cause=moved") == 38


def test_rebalance_moves_half_the_users_to_a_registrar_that_comes_back(
    launch: Launcher,
) -> None:
    rate, slowstart = 5, 3
    outcome = rebalance(launch, Setup(73), count=40, rate=rate, slowstart=slowstart)
    assert outcome.errors == []
    assert outcome.seen["servers"] == {"kam1": 40}
    assert outcome.seen["moved_while_down"] == 0
    assert outcome.cut == []
    at = outcome.moved_at
    # Nothing while kam2 was in slow start; then about half ...
    assert at[0] >= slowstart - 0.5, at
    assert 16 <= len(at) <= 22, at
    # ... no faster than the rate, and no slower ...
    assert (len(at) - 1) / (at[-1] - at[0] + 1) <= rate * 1.5, at
    assert at[-1] <= slowstart + 20 / rate + 2, at
    # ... each registered again on kam2 at once.
    assert max(outcome.registered_again()) < 1.0
    assert outcome.landed == {("kam1", "kam2"): len(at)}
    assert outcome.registered == Counter(f"u{u.n}" for u in outcome.moved)
    active = outcome.seen["active"]
    assert active["kam1"] + active["kam2"] == 40
    assert active["kam2"] >= 18, active
    assert outcome.balancer.count("cause=moved") == len(at)
