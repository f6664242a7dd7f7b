"""The pure idle-timeout accounting."""

import attrs
import pytest

from ocsbal._idle import MAX_SWEEP_INTERVAL, MIN_SWEEP_INTERVAL, IdleTimeout


@attrs.define
class Conn:
    last_activity: float


def test_expired_selects_exactly_those_idle_for_the_timeout() -> None:
    """A connection idle for the full timeout expires; one a moment younger stays."""
    old, edge, young = Conn(0.0), Conn(70.0), Conn(70.5)
    idle = IdleTimeout(30.0)
    assert idle.expired([old, edge, young], now=100.0) == [old, edge]


def test_expired_returns_a_list_safe_to_close_while_iterating() -> None:
    """Closing expired connections removes them from the set being swept."""
    live = [Conn(0.0), Conn(1.0)]
    for c in IdleTimeout(1.0).expired(live, now=10.0):
        live.remove(c)
    assert live == []


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [
        (1800.0, MAX_SWEEP_INTERVAL),  # 30 minutes: sweep every 30 s at most
        (200.0, 10.0),  # a twentieth of the timeout
        (0.5, MIN_SWEEP_INTERVAL),  # tiny test timeouts don't spin
    ],
)
def test_sweep_interval_is_a_bounded_fraction_of_the_timeout(
    timeout: float, interval: float
) -> None:
    assert IdleTimeout(timeout).sweep_interval == interval


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        IdleTimeout(0)


def test_a_live_registration_outlasts_the_idle_timeout_plus_grace() -> None:
    idle = IdleTimeout(1800)
    assert idle.closing(50) == (1850, "idle")
    # Registered until 1300, with 60 s of grace.
    assert idle.closing(100, expiry=1300, grace=60) == (1900, "idle")
    assert IdleTimeout(600).closing(100, 1300, 60) == (1360, "registration")
    assert idle.closing(100, 1300, 60, reap=True) == (1360, "missed-refresh")
