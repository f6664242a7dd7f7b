"""The SIP path against RFC 4475's torture messages, read where they are kept.

The 49 messages are the exact bytes of the RFC's archive, in
``../shared/sip-torture`` (or ``$OCSBAL_SIP_TORTURE``), never copied here;
their SOURCE.md gives each one's section and sha256, which are checked.
Every message is relayed byte-exact through an inspecting port, whole and
a byte at a time, and its events are the same wherever it is cut; the
well-framed valid ones are followed back to back on one connection without
giving up; the others each end as :data:`OUTCOMES` says, the connection
relaying on.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from ocsbal.sip import GaveUp, Ping, Request, Response, SIPInspector
from test_relay import REGISTER, Harness

CORPUS = Path(
    os.environ.get(
        "OCSBAL_SIP_TORTURE", Path(__file__).parents[2] / "shared" / "sip-torture"
    )
)


def corpus() -> dict[str, tuple[str, bytes]]:
    """Each message's name: its RFC 4475 section and bytes, as SOURCE.md lists."""
    source = CORPUS / "SOURCE.md"
    if not source.exists():
        message = f"the RFC 4475 torture messages are not in {CORPUS}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    found = {}
    for section, name, size, digest in re.findall(
        r"^(3\.\d(?:\.\d)?)\s+(\w+)\.dat\s+(\d+)\s+([0-9a-f]{64})$",
        source.read_text(),
        re.MULTILINE,
    ):
        data = (CORPUS / f"{name}.dat").read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (int(size), digest)
        found[name] = (section, data)
    assert len(found) == 49
    return found


#: What following each message that is not well-framed and valid comes to:
#: the inspector's give-up reason, or ``None`` if it follows on (a message
#: whose mistakes are not in its framing, or one it waits for the rest of).
OUTCOMES: dict[str, str | None] = {
    # 3.1.1, valid, but two messages in one datagram's worth of bytes: the
    # second's body runs short, so what follows is no start line.
    "dblreq": "bad-start-line",
    # 3.4: no Content-Length, so its body is taken for the next message,
    # whose header block never ends.
    "inv2543": None,
    # 3.3: two Content-Lengths that disagree.
    "mcl01": "bad-content-length",
    # 3.1.2, the invalid messages.
    "badinv01": None,
    "clerr": None,  # announces more body than it has: the rest is awaited
    "ncl": "bad-content-length",  # a negative Content-Length
    "scalar02": None,
    "scalarlg": None,
    "quotbal": None,
    "ltgtruri": None,
    "lwsruri": "bad-start-line",  # spaces inside the Request-URI
    "lwsstart": "bad-start-line",  # more than one space between the parts
    "trws": "bad-start-line",  # a space after the version
    "escruri": None,
    "baddate": None,
    "regbadct": None,
    "badaspec": None,
    "baddn": None,  # its header block never ends (the archive's own)
    "badvers": "bad-start-line",  # SIP/7.0
    "mismatch01": None,
    "mismatch02": None,
    "bigcode": "bad-start-line",  # a status code of ten digits
}


#: Every message's name (parametrized tests need them before the corpus is
#: read; a test checks they are its names).
NAMES = sorted(
    [
        *("wsinv", "intmeth", "esc01", "escnull", "esc02", "lwsdisp", "longreq"),
        *("semiuri", "transports", "mpart01", "unreason", "noreason"),
        *("badbranch", "insuf", "unkscm", "novelsc", "unksm2", "bext01", "invut"),
        *("regaut01", "multi01", "bcast", "zeromf", "cparam01", "cparam02"),
        *("regescrt", "sdp01", *OUTCOMES),
    ]
)


def well_framed() -> list[bytes]:
    """The messages the issue names: all but dblreq, inv2543, mcl01 and 3.1.2."""
    return [
        data
        for name, (section, data) in corpus().items()
        if section != "3.1.2" and name not in OUTCOMES
    ]


def from_server(data: bytes) -> bool:
    return data.startswith(b"SIP/2.0 ")


def events(data: bytes, *cuts: int) -> list[object]:
    inspector = SIPInspector(from_server=from_server(data))
    pieces = [data[a:b] for a, b in zip((0, *cuts), (*cuts, len(data)), strict=True)]
    return [event for piece in pieces for event in inspector.feed(piece)]


def test_the_corpus_is_what_its_source_says() -> None:
    sections = sorted({section for section, _ in corpus().values()})
    assert sections == ["3.1.1", "3.1.2", "3.2", "3.3", "3.4"]
    assert set(OUTCOMES) - set(corpus()) == set()


@pytest.mark.parametrize("name", [*sorted(OUTCOMES), "wsinv", "mpart01", "longreq"])
def test_a_message_cut_anywhere_is_followed_the_same(name: str) -> None:
    _, data = corpus()[name]
    whole = events(data)
    for cut in range(1, len(data)):
        assert events(data, cut) == whole, cut


def test_every_message_cut_in_two_anywhere_is_followed_the_same() -> None:
    for name, (_, data) in corpus().items():
        whole = events(data)
        for cut in range(1, len(data), 7):
            assert events(data, cut, min(len(data), cut + 13)) == whole, (name, cut)


def test_the_well_framed_valid_ones_are_followed_back_to_back() -> None:
    messages = well_framed()
    assert len(messages) == 27
    requests = b"".join(m for m in messages if not from_server(m))
    responses = b"".join(m for m in messages if from_server(m))
    for stream, server in ((requests, False), (responses, True)):
        inspector = SIPInspector(from_server=server)
        followed = inspector.feed(stream)
        assert inspector.gave_up is None
        assert all(isinstance(e, Request | Response) for e in followed)
        assert len(followed) == sum(from_server(m) == server for m in messages)
    assert len(SIPInspector().feed(requests[:-1] + requests[-1:])) > 20


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_the_others_end_as_expected_and_the_connection_relays_on(name: str) -> None:
    _, data = corpus()[name]
    inspector = SIPInspector(from_server=from_server(data))
    ended = inspector.feed(data)
    assert inspector.gave_up == OUTCOMES[name], ended
    if inspector.gave_up is not None:
        assert ended[-1] == GaveUp(inspector.gave_up)
        assert inspector.feed(REGISTER) == []  # for good


@pytest.mark.parametrize("name", NAMES)
def test_each_is_relayed_byte_exact_whole_and_a_byte_at_a_time(name: str) -> None:
    """Through a sip port's relay, as the client's bytes or the server's."""
    _, data = corpus()[name]
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        h = Harness()
        client, client_t = h.accept()
        server, server_t = h.succeed()
        sender, received = (
            (server, client_t) if from_server(data) else (client, server_t)
        )
        for piece in pieces:
            sender.dataReceived(piece)
        sender.dataReceived(b"\r\n\r\n")  # and what follows goes on too
        assert received.value() == data + b"\r\n\r\n"


def test_the_names_are_the_whole_corpus() -> None:
    assert sorted(NAMES) == sorted(corpus())


def test_a_ping_after_a_followed_message_is_still_a_ping() -> None:
    _, data = corpus()["wsinv"]
    assert events(data + b"\r\n\r\n")[-1] == Ping()
