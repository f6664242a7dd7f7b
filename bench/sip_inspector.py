"""Measure the SIP inspector's throughput, alone and as the relay uses it.

Run ``.venv/bin/python bench/sip_inspector.py``.  The streams are those of
``bench/conversations.py``: the REGISTER-only conversation and the OCS mix
(a sign-in, then a signed-in client's traffic, a REGISTER about one message
in twenty).  Each is fed, the client's messages to one inspector and the
pool's to another, in 64 KiB chunks (a busy connection read in bulk) and in
1.5 KB chunks (a segment at a time):

- **alone**: the inspectors only: framing, and the headers of what a
  registration is read from;
- **followed**: what the relay does with every chunk it has relayed
  (:func:`ocsbal.sip.follow`): the inspector, the connection's
  ``Registrations`` and the pool's ``SIPTally``, a message a chunk, the
  client's and the pool's in turn, as a conversation comes.

Each figure is messages a second over the fastest of ``--runs`` runs (noise
on a shared machine only ever slows a run), and the median beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from conversations import Turn, messages, ocs_mix, register_only

from ocsbal.sip import Registrations, SIPInspector, SIPTally, follow

CONVERSATIONS: dict[str, Callable[[], list[Turn]]] = {
    "register-only": register_only,
    "ocs-mix": ocs_mix,
}


def chunked(stream: bytes, size: int) -> list[bytes]:
    """``stream`` cut into pieces of ``size`` bytes."""
    return [stream[at : at + size] for at in range(0, len(stream), size)]


def alone(client: list[bytes], server: list[bytes]) -> float:
    """Seconds for two inspectors to take the two directions."""
    ours, theirs = SIPInspector(), SIPInspector(from_server=True)
    start = time.perf_counter()
    for chunk in client:
        ours.feed(chunk)
    for chunk in server:
        theirs.feed(chunk)
    elapsed = time.perf_counter() - start
    assert ours.gave_up is None  # else the figure is void
    assert theirs.gave_up is None
    return elapsed


def followed(turns: list[Turn]) -> float:
    """Seconds for what the relay does with each message of ``turns``."""
    ours, theirs = SIPInspector(), SIPInspector(from_server=True)
    account, tally = Registrations(), SIPTally()
    start = time.perf_counter()
    for sent, answer in turns:
        follow(ours, account, tally, sent, 1.0)
        follow(theirs, account, tally, answer, 1.0)
    elapsed = time.perf_counter() - start
    assert ours.gave_up is None  # else the figure is void
    assert theirs.gave_up is None
    assert account.bindings, "the REGISTERs were not followed"
    return elapsed


def main() -> None:
    """Run every case ``--runs`` times; print the fastest and the median."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{'case':<40}{'fastest msg/s':>15}{'median':>12}")
    for name, conversation in CONVERSATIONS.items():
        turns = conversation()
        per_round = messages(turns)[0]
        rounds = max(1, args.messages // per_round)
        client = b"".join(sent for sent, _ in turns) * rounds
        server = b"".join(answer for _, answer in turns) * rounds
        count = per_round * rounds
        cases: list[tuple[str, Callable[..., float], tuple[object, ...]]] = [
            (
                f"{name}, alone, {label} chunks",
                alone,
                (chunked(client, size), chunked(server, size)),
            )
            for size, label in ((65536, "64 KiB"), (1500, "1.5 KB"))
        ]
        cases.append((f"{name}, followed", followed, (turns * rounds,)))
        for case, timed, timed_args in cases:
            seconds = [timed(*timed_args) for _ in range(args.runs)]
            print(
                f"{case:<40}{count / min(seconds):>15,.0f}"
                f"{count / statistics.median(seconds):>12,.0f}"
            )


if __name__ == "__main__":
    main()
