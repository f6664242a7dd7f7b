"""How fast and how gently ocsbal moves SIP users: the scenarios of
tests/integration/move_scenarios.py at a larger size, with figures.

Users of our own (a thread each, a real TCP connection through the VIP)
registered through ``twistd -n ocsbal`` (two workers) to two Kamailio
registrars; when the balancer closes a user's connection the user connects
again at once and registers again, as Office Communicator does.

- **drain**: everyone on kam1, some in a call, some waiting for an answer;
  kam1 is drained with ``move_within``.  Figures: the even rate the window
  asks for beside the moves actually made each second (median, highest),
  the last move's time against the window, calls cut and requests left
  unanswered, and each moved user's time from its close to its 200 from
  kam2.
- **rebalance**: everyone on kam1 while kam2 is down; kam2 starts.
  Figures: the set rate beside the rate achieved, when the first move came
  after kam2 was up (its slow start), the spread at the end, and the same
  re-registration times.

No other balancer moves users, so there is nothing to set beside these:
they are figures of behaviour, not ratios.  Needs Debian's kamailio
(``make bench`` installs it); runs on 127.0.72.0/24 and 127.0.73.0/24.

    .venv/bin/python bench/moves.py [--users 1000] [--window 30] [--rate 50]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
from harness import Launcher  # noqa: E402
from move_scenarios import Outcome, Setup, drain, rebalance  # noqa: E402
from run import machine  # noqa: E402
from supervise import raise_fd_limit  # noqa: E402

from ocsbal._moving import TICK  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    """Median, 99th percentile and highest, in milliseconds."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def pace(at: list[float]) -> dict[str, Any]:
    """The moves' pace, from the times the users saw their closes (sorted).

    The mover acts once a tick (:data:`ocsbal._moving.TICK`, a second), and
    the closes of one tick reach the users within some milliseconds: a
    gap of half a tick or more between two closes separates two ticks'
    batches.  Whole seconds of the clock would split a batch, or take two
    ticks when one was late and the next on time, so the batches are
    counted, and the rate is the moves over the ticks they took.
    """
    batches = [1]
    for before, after in itertools.pairwise(at):
        if after - before >= TICK / 2:
            batches.append(0)
        batches[-1] += 1
    return {
        "rate": round(len(at) / (len(batches) * TICK), 1),
        "batches": len(batches),
        "batch_median": statistics.median(batches),
        "batch_max": max(batches),
    }


def common(outcome: Outcome) -> dict[str, Any]:
    return {
        "users": len(outcome.users),
        "moved": len(outcome.moved),
        "errors": outcome.errors[:5],
        "cut": len(outcome.cut),
        "registered_again": percentiles(outcome.registered_again()),
        "landed": {" > ".join(k): n for k, n in outcome.landed.items()},
    }


def run_drain(users: int, window: float) -> dict[str, Any]:
    calls = askers = max(4, users // 50)
    with tempfile.TemporaryDirectory(prefix="ocsbal-moves-") as tmp:
        launch = Launcher(Path(tmp))
        try:
            outcome = drain(
                launch,
                Setup(72),
                count=users,
                window=window,
                calls=calls,
                askers=askers,
            )
        finally:
            launch.stop_all()
    movable = users - (calls - calls // 2)
    return {
        **common(outcome),
        "window_s": window,
        "in_call_at_window_end": calls - calls // 2,
        "even_rate": round(movable / window, 1),
        **pace(outcome.moved_at),
        "last_move_s": round(outcome.moved_at[-1], 2),
    }


def run_rebalance(users: int, rate: float) -> dict[str, Any]:
    slowstart = 3.0
    with tempfile.TemporaryDirectory(prefix="ocsbal-moves-") as tmp:
        launch = Launcher(Path(tmp))
        try:
            outcome = rebalance(
                launch, Setup(73), count=users, rate=rate, slowstart=slowstart
            )
        finally:
            launch.stop_all()
    at = outcome.moved_at
    return {
        **common(outcome),
        "set_rate": rate,
        **pace(at),
        "slowstart_s": slowstart,
        "first_move_after_up_s": round(at[0], 2),
        "moved_while_down": outcome.seen["moved_while_down"],
        "active_at_end": outcome.seen["active"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--window", type=float, default=30.0, help="drain, seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="rebalance, a second")
    parser.add_argument(
        "--output",
        type=Path,
        default=HERE / "results" / "moves.json",
        help="where the figures go (default bench/results/moves.json)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    figures = {
        "drain": run_drain(args.users, args.window),
        "rebalance": run_rebalance(args.users, args.rate),
    }
    text = json.dumps(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            **figures,
        },
        indent=2,
    )
    args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
