"""Whether a SIP connection is quiet: no transaction open, no call (ocsbal.sip)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ocsbal.sip import Registrations, SIPInspector
from ocsbal.sip._accounts import MAX_DIALOGS


def request(method: str, call: str, cseq: int = 1) -> bytes:
    return (
        f"{method} sip:x@contoso.com SIP/2.0\r\nCall-ID: {call}\r\n"
        f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def response(status: int, method: str, call: str, cseq: int = 1) -> bytes:
    return (
        f"SIP/2.0 {status} X\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Connection:
    """Both directions of one connection, as the relay follows them."""

    def __init__(self) -> None:
        self.sip = Registrations()
        self.up = SIPInspector()
        self.down = SIPInspector(from_server=True)

    def client(self, data: bytes) -> None:
        for event in self.up.feed(data):
            self.sip.from_client(event, 0.0)

    def server(self, data: bytes) -> None:
        for event in self.down.feed(data):
            self.sip.from_server(event, 0.0)


def test_a_request_is_busy_until_its_final_response() -> None:
    c = Connection()
    assert c.sip.quiet
    c.client(request("MESSAGE", "m1"))
    assert (c.sip.quiet, c.sip.transactions) == (False, 1)
    c.server(response(100, "MESSAGE", "m1"))
    assert not c.sip.quiet  # provisional
    c.server(response(200, "MESSAGE", "m1"))
    assert c.sip.quiet


def test_a_request_of_the_server_counts_too() -> None:
    """A MESSAGE the server sends down the client's connection."""
    c = Connection()
    c.server(request("MESSAGE", "m2"))
    assert not c.sip.quiet
    assert c.sip.last_message == "MESSAGE sip:x@contoso.com"
    c.client(response(200, "MESSAGE", "m2"))
    assert c.sip.quiet
    assert c.sip.last_message == "200 X (MESSAGE)"


def test_a_call_is_busy_from_its_2xx_until_its_bye_completes() -> None:
    c = Connection()
    c.client(request("INVITE", "call"))
    c.server(response(180, "INVITE", "call"))
    c.server(response(200, "INVITE", "call"))
    c.client(request("ACK", "call"))
    assert (c.sip.transactions, c.sip.dialogs, c.sip.quiet) == (0, 1, False)
    c.server(request("BYE", "call", 2))  # the far end hangs up
    assert (c.sip.dialogs, c.sip.quiet) == (0, False)  # its BYE is open
    c.client(response(200, "BYE", "call", 2))
    assert c.sip.quiet


def test_a_failed_or_cancelled_invite_leaves_no_call() -> None:
    c = Connection()
    c.client(request("INVITE", "a"))
    c.client(request("CANCEL", "a"))
    c.server(response(200, "CANCEL", "a"))
    c.server(response(487, "INVITE", "a"))
    c.client(request("ACK", "a"))
    assert (c.sip.dialogs, c.sip.quiet) == (0, True)


def test_a_connection_whose_sip_is_not_followed_is_never_quiet() -> None:
    c = Connection()
    c.sip.gave_up = "bad-start-line"
    assert not c.sip.quiet


def test_more_calls_than_it_keeps_are_never_quiet_again() -> None:
    c = Connection()
    for n in range(MAX_DIALOGS + 1):
        c.client(request("INVITE", f"c{n}"))
        c.server(response(200, "INVITE", f"c{n}"))
    for n in range(MAX_DIALOGS + 1):
        c.client(request("BYE", f"c{n}", 2))
        c.server(response(200, "BYE", f"c{n}", 2))
    assert not c.sip.quiet


def test_a_stray_response_never_hides_a_call() -> None:
    c = Connection()
    c.client(request("INVITE", "a"))
    c.server(response(200, "MESSAGE", "b"))  # answers nothing the client asked
    assert not c.sip.quiet  # the INVITE is still open
    c.server(response(200, "INVITE", "a"))
    assert (c.sip.dialogs, c.sip.quiet) == (1, False)


def test_a_2xx_again_answers_nothing_else() -> None:
    """Retransmitted until the ACK, or a second callee's: while a MESSAGE waits."""
    c = Connection()
    c.client(request("INVITE", "call"))
    c.server(response(200, "INVITE", "call"))
    c.client(request("MESSAGE", "m", 2))
    c.server(response(200, "INVITE", "call"))  # the first again: no ACK yet
    c.server(response(200, "INVITE", "call"))  # another fork's
    assert (c.sip.transactions, c.sip.dialogs) == (1, 1)
    c.client(request("ACK", "call"))
    c.server(response(200, "MESSAGE", "m", 2))
    assert c.sip.transactions == 0
    c.client(request("BYE", "call", 3))
    c.server(response(200, "BYE", "call", 3))
    assert c.sip.quiet


# Steps of a hypothesis run: who sends what, on a few Call-IDs.
STEP = st.tuples(
    st.sampled_from(["client", "server"]),
    st.sampled_from(
        [
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "MESSAGE",
            "OPTIONS",
            "100",
            "180",
            "200",
            "486",
        ]
    ),
    st.sampled_from(["a", "b"]),
)


def play(c: Connection, steps: list[tuple[str, str, str]]) -> set[str]:
    """Play ``steps``; the Call-IDs with a confirmed call not yet hung up."""
    calls: set[str] = set()
    invites: dict[str, str] = {}  # who sent the INVITE of each Call-ID open
    for side, what, call in steps:
        send = c.client if side == "client" else c.server
        if what.isdigit():
            status = int(what)
            # A response to the open INVITE of this call, if the other side sent one.
            asker = invites.get(call)
            method = "INVITE" if asker and asker != side else "MESSAGE"
            send(response(status, method, call))
            if method == "INVITE" and status >= 200:
                invites.pop(call)
                if status < 300:
                    calls.add(call)
        else:
            send(request(what, call))
            if what == "INVITE":
                invites[call] = side
            elif what == "BYE":
                calls.discard(call)
    return calls


@settings(max_examples=1000)
@given(st.lists(STEP, max_size=40))
def test_no_sequence_makes_a_connection_with_a_call_quiet(
    steps: list[tuple[str, str, str]],
) -> None:
    c = Connection()
    calls = play(c, steps)
    if calls:
        assert not c.sip.quiet


@given(st.lists(STEP, max_size=40))
def test_quiet_again_once_every_transaction_and_call_is_done(
    steps: list[tuple[str, str, str]],
) -> None:
    c = Connection()
    calls = play(c, steps)
    for call in calls:  # hang up every call, both ways answered
        c.client(request("BYE", call, 9))
    # Answer whatever each side still waits for: its INVITEs declined.
    for _ in range(c.sip._up_invites):
        c.server(response(487, "INVITE", "z"))
    for _ in range(c.sip._down_invites):
        c.client(response(487, "INVITE", "z"))
    for _ in range(c.sip._up_open):
        c.server(response(200, "MESSAGE", "z"))
    for _ in range(c.sip._down_open):
        c.client(response(200, "MESSAGE", "z"))
    assert c.sip.quiet
