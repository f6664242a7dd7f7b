"""Coverage-guided fuzzing of the SIP inspector and registration accounting.

Run by ``tests/test_fuzz.py`` (a bounded number of inputs in ``make test``),
or by hand for longer::

    .venv/bin/python tests/fuzz/fuzz_sip.py -max_total_time=600 CORPUS_DIR

Each input is one connection: its first byte chooses where the stream is cut
into pieces, and the stream is fed both ways, as a client's and as a
server's, through everything the relay runs on it.  libFuzzer reports any
exception as a crash and any input that takes more than ``-timeout`` seconds.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["ocsbal.sip"]):
    from ocsbal.sip import (
        Registrations,
        Request,
        Response,
        SIPInspector,
        SIPTally,
    )


def pieces(data: bytes) -> list[bytes]:
    """``data`` after its first byte, cut every ``first byte + 1`` bytes."""
    if not data:
        return []
    step = data[0] + 1
    return [data[i : i + step] for i in range(1, len(data), step)]


def follow(data: bytes) -> None:
    """Everything the relay and the admin interface do with a stream."""
    registrations = Registrations()
    tally = SIPTally()
    client, server = SIPInspector(), SIPInspector(from_server=True)
    now = 0.0
    for piece in pieces(data):
        now += 1.0
        for inspector, observe in (
            (client, registrations.from_client),
            (server, registrations.from_server),
        ):
            for event in inspector.feed(piece):
                tally.count(event)
                observe(event, now)
                if isinstance(event, Request | Response):
                    headers = event.headers
                    assert headers.content_length >= 0
                    for name in ("call-id", "cseq", "contact", "expires"):
                        headers.values(name)
                    _ = (headers.call_id, headers.cseq, headers.to_tag)
                    _ = (headers.from_uri, headers.from_tag, headers.contact_star)
    _ = (registrations.bindings, registrations.expiry, registrations.last_message)
    registrations.lapsed(now + 10**6, 120)


def main() -> None:
    atheris.Setup(sys.argv, follow)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
