"""Measure the SIP inspector's throughput; print a table.

Run ``.venv/bin/python bench/sip_inspector.py``.  The stream is what an
Office Communicator 2007 R2 client and its pool exchange: a REGISTER with
Kerberos credentials, its 200 OK, a NOTIFY carrying an XML body and its
200 OK, and a keep-alive ping, about 600 to 1,000 bytes a message.  It is
fed to one inspector in 64 KiB chunks (a busy connection read in bulk) and
in 1.5 KB chunks (one segment at a time), and set beside the cost of only
cutting the same stream into the same chunks, which is the least a relay
written in Python pays to pass it on.  Each figure is the median of
``--runs`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

from ocsbal.sip import Ping, SIPInspector

REGISTER = (
    b"REGISTER sip:contoso.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.168.1.20:50123\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@contoso.com>;tag=8e9b2e3d5c;epid=01010101\r\n"
    b"To: <sip:alice@contoso.com>\r\n"
    b"Call-ID: 0a1b2c3d4e5f4a6b8c9d0e1f2a3b4c5d\r\n"
    b"CSeq: %d REGISTER\r\n"
    b"Contact: <sip:192.168.1.20:50123;transport=tls;ms-opaque=d3470f2e1d>;"
    b'methods="INVITE, MESSAGE, INFO, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER";'
    b'proxy=replace;+sip.instance="<urn:uuid:D1C3A8E0-4A36-5D36-9A4F-1B2C3D4E5F60>"\r\n'
    b"User-Agent: UCCAPI/3.5.6907.0 OC/3.5.6907.0 "
    b"(Microsoft Office Communicator 2007 R2)\r\n"
    b"Supported: gruu-10, adhoclist, msrtc-event-categories\r\n"
    b"Supported: ms-forking\r\n"
    b"ms-keep-alive: UAC;hop-hop=yes\r\n"
    b"Event: registration\r\n"
    b'Proxy-Authorization: Kerberos qop="auth", realm="SIP Communications Service",'
    b' opaque="8F7AD3C4", crand="1a2b3c4d", cnum="2",'
    b' targetname="sip/ocspool.contoso.com",'
    b' response="0123456789abcdef0123456789abcdef01234567"\r\n'
    b"Content-Length: 0\r\n\r\n"
)
REGISTERED = (
    b"SIP/2.0 200 OK\r\n"
    b"ms-keep-alive: UAS; tcp=no; hop-hop=yes; end-point=no; timeout=300\r\n"
    b'Authentication-Info: Kerberos rspauth="602306092A864886F71201020202011100",'
    b' srand="3A1B2C4D", snum="3", opaque="8F7AD3C4", qop="auth",'
    b' targetname="sip/ocspool.contoso.com", realm="SIP Communications Service"\r\n'
    b"From: <sip:alice@contoso.com>;tag=8e9b2e3d5c;epid=01010101\r\n"
    b"To: <sip:alice@contoso.com>;tag=7A2F3B1C\r\n"
    b"Call-ID: 0a1b2c3d4e5f4a6b8c9d0e1f2a3b4c5d\r\n"
    b"CSeq: %d REGISTER\r\n"
    b"Via: SIP/2.0/TLS 192.168.1.20:50123;received=10.0.0.5;ms-received-port=50123\r\n"
    b"Contact: <sip:192.168.1.20:50123;transport=tls;ms-opaque=d3470f2e1d>;"
    b'expires=7200;+sip.instance="<urn:uuid:D1C3A8E0-4A36-5D36-9A4F-1B2C3D4E5F60>"\r\n'
    b"Expires: 7200\r\n"
    b'presence-state: register-action="added"\r\n'
    b"Allow-Events: vnd-microsoft-provisioning,vnd-microsoft-roaming-contacts,"
    b"presence,presence.wpending,vnd-microsoft-roaming-self\r\n"
    b"Supported: adhoclist, msrtc-event-categories\r\n"
    b"Server: RTC/3.5\r\n"
    b"Content-Length: 0\r\n\r\n"
)
BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\r\n'
    b'<roamingData xmlns="http://schemas.microsoft.com/2006/09/sip/roaming-self">'
    b'<categories xmlns="http://schemas.microsoft.com/2006/09/sip/categories"'
    b' uri="sip:alice@contoso.com"><category name="note" instance="0"'
    b' publishTime="2026-11-25T04:46:27.000Z" container="400" version="3">'
    b'<note xmlns="http://schemas.microsoft.com/2006/09/sip/note">'
    b'<body type="personal">In the lab until noon</body></note></category>'
    b"</categories></roamingData>"
)
NOTIFY = (
    b"BENOTIFY sip:192.168.1.20:50123;transport=tls SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.21:5061;branch=z9hG4bK8A2F1C00.77B6D1E2\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: <sip:alice@contoso.com>;tag=8e9b2e3d5c\r\n"
    b"From: <sip:alice@contoso.com>;tag=1A2B3C4D\r\n"
    b"Call-ID: 5e6f7a8b9c0d4e1f\r\n"
    b"CSeq: %d BENOTIFY\r\n"
    b"Event: vnd-microsoft-roaming-self\r\n"
    b"Subscription-State: active;expires=28800\r\n"
    b"Content-Type: application/vnd-microsoft-roaming-self+xml\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
NOTIFIED = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TLS 10.0.0.21:5061;branch=z9hG4bK8A2F1C00.77B6D1E2\r\n"
    b"To: <sip:alice@contoso.com>;tag=8e9b2e3d5c\r\n"
    b"From: <sip:alice@contoso.com>;tag=1A2B3C4D\r\n"
    b"Call-ID: 5e6f7a8b9c0d4e1f\r\n"
    b"CSeq: %d BENOTIFY\r\n"
    b"Content-Length: 0\r\n\r\n"
)
#: One round of the conversation: four messages and a ping.
ROUND = (REGISTER, REGISTERED, NOTIFY, NOTIFIED, b"\r\n\r\n")
MESSAGES_PER_ROUND = 4


def conversation(rounds: int) -> bytes:
    """``rounds`` rounds of the conversation, each with its own CSeq."""
    return b"".join(
        part.replace(b"%d", b"%d" % n) for n in range(rounds) for part in ROUND
    )


def chunked(stream: bytes, size: int) -> list[bytes]:
    """``stream`` cut into pieces of ``size`` bytes."""
    return [stream[at : at + size] for at in range(0, len(stream), size)]


def time_slicing(stream: bytes, size: int) -> float:
    """Seconds to cut ``stream`` into ``size``-byte pieces and drop them."""
    start = time.perf_counter()
    for at in range(0, len(stream), size):
        stream[at : at + size]  # the slice is what is measured
    return time.perf_counter() - start


def time_inspecting(chunks: list[bytes], rounds: int) -> float:
    """Seconds to feed ``chunks`` to a fresh inspector, checked for sense."""
    inspector = SIPInspector()
    feed = inspector.feed
    start = time.perf_counter()
    events = [event for chunk in chunks for event in feed(chunk)]
    elapsed = time.perf_counter() - start
    # A benchmark of an inspector that gave up, or missed messages, is void.
    pings = sum(isinstance(event, Ping) for event in events)
    assert inspector.gave_up is None, inspector.gave_up
    assert (len(events) - pings, pings) == (MESSAGES_PER_ROUND * rounds, rounds)
    return elapsed


def main() -> None:
    """Run every case ``--runs`` times and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    stream = conversation(args.rounds)
    messages = MESSAGES_PER_ROUND * args.rounds
    print(
        f"{messages} messages (+{args.rounds} pings), {len(stream) / 1e6:.1f} MB, "
        f"{len(stream) / messages:.0f} bytes a message; median of {args.runs} runs"
    )
    print(f"{'case':<28}{'messages/s':>14}{'MB/s':>10}")
    for size, label in ((65536, "64 KiB"), (1500, "1.5 KB")):
        chunks = chunked(stream, size)
        cases = (
            (f"inspect, {label} chunks", time_inspecting, (chunks, args.rounds)),
            (f"slice only, {label} chunks", time_slicing, (stream, size)),
        )
        for name, timed, timed_args in cases:
            seconds = statistics.median(timed(*timed_args) for _ in range(args.runs))
            print(
                f"{name:<28}{messages / seconds:>14,.0f}"
                f"{len(stream) / seconds / 1e6:>10,.1f}"
            )


if __name__ == "__main__":
    main()
