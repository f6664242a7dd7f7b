"""The compiled SIP path says what the Python it is compiled from says.

setup.py compiles ``ocsbal.sip``'s three modules with mypyc where a C
compiler is found; the Python stays the reference.  Fed the same streams,
cut the same random ways, both must give the same events and come to the
same registrations and tallies: the benchmarks' Office Communicator
conversations, RFC 4475's torture messages and the tests' hostile ones.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ocsbal.sip
import pure_sip
import test_sip
import test_sip_hostile
from bench_modules import bench_module
from test_sip_torture import corpus


def _conversations() -> ModuleType:
    """bench/conversations.py: what the benchmarks carry."""
    return bench_module("conversations")


def _streams() -> dict[str, tuple[bytes, bytes]]:
    """Each corpus as the client's stream and the server's."""
    conversations = _conversations()
    streams = {
        name: (b"".join(sent for sent, _ in turns), b"".join(got for _, got in turns))
        for name, turns in (
            ("register-only", conversations.register_only()),
            ("ocs-mix", conversations.ocs_mix()),
        )
    }
    streams["tests"] = (test_sip.REGISTER * 2, test_sip.OK + test_sip_hostile.OK)
    try:
        torture = corpus()
    except pytest.skip.Exception:  # test_sip_torture says where it is missing
        torture = {}
    for name, (_, message) in torture.items():
        streams[f"torture {name}"] = (message, message)
    return streams


STREAMS = _streams()

needs_compiled = pytest.mark.skipif(
    not ocsbal.sip.COMPILED and os.environ.get("CI") != "true",
    reason="the SIP path is not compiled here (make install, with gcc and "
    "python3-dev installed, compiles it)",
)


@needs_compiled
def test_make_test_runs_the_compiled_path() -> None:
    """In CI, where make install has a compiler, nothing runs uncompiled."""
    assert ocsbal.sip.COMPILED
    assert ocsbal.sip.SIPInspector is not pure_sip.load()["_inspector"].SIPInspector


def _said(event: Any) -> tuple[object, ...]:
    """What an event says, comparable across the two builds' classes."""
    kind = type(event).__name__
    if kind in ("Ping", "Pong"):
        return (kind,)
    if kind == "GaveUp":
        return (kind, event.reason)
    headers = event.headers
    read = (
        headers.call_id,
        headers.cseq,
        headers.to_uri,
        headers.to_tag,
        headers.from_uri,
        headers.from_tag,
        tuple((c.uri, c.expires) for c in headers.contacts),
        headers.contact_star,
        headers.expires,
        headers.values("via"),
    )
    first = event.method if kind == "Request" else (event.status, event.reason)
    return (kind, first, event.head, event.start_line, event.content_length, read)


def _follow(
    sip: dict[str, ModuleType], client: list[bytes], server: list[bytes]
) -> list[object]:
    """Everything one build makes of a connection's two streams, so cut."""
    inspect, accounts = sip["_inspector"], sip["_accounts"]
    ours, theirs = inspect.SIPInspector(), inspect.SIPInspector(from_server=True)
    account, tally = accounts.Registrations(), accounts.SIPTally()
    said: list[object] = []
    # In turns, as a conversation comes: a REGISTER's answer finds it waiting.
    for step in range(max(len(client), len(server))):
        for inspector, chunks in ((ours, client), (theirs, server)):
            if step < len(chunks):
                before = len(said)
                events = inspector.feed(chunks[step])
                said += [_said(event) for event in events]
                for event in events:
                    tally.count(event)
                    observe = (
                        account.from_server
                        if inspector.from_server
                        else account.from_client
                    )
                    observe(event, float(step))
                said.append(("chunk", step, len(said) - before))
    said += [
        account.bindings,
        account.keepalives,
        account.last_message,
        account.expiry,
        (ours.gave_up, theirs.gave_up, ours.held, theirs.held),
        (tally.requests, tally.responses, tally.keepalives, tally.gave_up),
    ]
    return said


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` in pieces of ``sizes`` in turn, over and over.

    No more than about 2,000 pieces: a long conversation's smallest pieces
    are longer than a byte, which the torture messages' are not.
    """
    least = len(data) // 2000
    pieces, start, turn = [], 0, 0
    while start < len(data):
        size = max(sizes[turn % len(sizes)], least)
        pieces.append(data[start : start + size])
        start += size
        turn += 1
    return pieces


PURE = pure_sip.load()
COMPILED = {module: getattr(ocsbal.sip, module) for module in pure_sip.MODULES}


@needs_compiled
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(STREAMS)),
    client_cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    server_cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
)
def test_both_builds_say_the_same_of_every_corpus_however_cut(
    name: str, client_cuts: list[int], server_cuts: list[int]
) -> None:
    client, server = STREAMS[name]
    cut = _cut(client, client_cuts), _cut(server, server_cuts)
    assert _follow(COMPILED, *cut) == _follow(PURE, *cut)


@needs_compiled
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_both_builds_say_the_same_of_each_corpus_whole(
    name: str,
) -> None:
    client, server = STREAMS[name]
    cut = [client], [server]
    assert _follow(COMPILED, *cut) == _follow(PURE, *cut)
