"""Office Communicator users, as far as a move concerns them: real TCP
connections through the VIP, each user's SIP driven by a thread of its own.

A user registers its address of record (``sip:uN@itest.example.com``) over
its connection and stays.  The test may make it call (INVITE, the 200, the
ACK: a call established), hang up (BYE and its 200) or ask (a MESSAGE,
which the registrar answers seconds later).  When the balancer closes its
connection the user does what a well-behaved client does: it connects
again through the VIP at once and registers again.  Everything it sees is
kept, with the time: each close (and whether a call or a request was cut
by it), each registration and which server answered it (the ``Server``
header), each answer.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import attrs
from harness import WAIT

DOMAIN = b"itest.example.com"


@attrs.frozen
class Registration:
    """A 200 to a user's REGISTER: when, and which server sent it."""

    at: float
    server: str


@attrs.frozen
class Close:
    """The balancer closed a user's connection.

    :ivar in_call: a call was established on it (INVITE answered, no BYE).
    :ivar waiting: the requests sent on it and still unanswered.
    """

    at: float
    in_call: bool
    waiting: tuple[str, ...]


class User(threading.Thread):
    """One client: connects, registers, obeys the test, reconnects when moved."""

    def __init__(self, n: int, vip: tuple[str, int]) -> None:
        super().__init__(name=f"user u{n}", daemon=True)
        self.n, self.vip = n, vip
        self.registrations: list[Registration] = []
        self.closes: list[Close] = []
        self.answered: list[tuple[float, str]] = []  # (when, "200 MESSAGE")
        self.error: str | None = None
        self.in_call = False
        self._waiting: dict[int, str] = {}  # CSeq number: method
        self._cseq = 0
        self._call_tag = b""
        self._commands: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        # The thread sleeps in poll() until its connection or the test
        # (through the bell) has something for it: no busy polling, so a
        # thousand users cost next to no CPU beside the balancer.
        self._bell, self._ring = socket.socketpair()
        self._sock = socket.socket()
        self._buffer = b""

    # What the test asks, done by the user's own thread.

    def call(self) -> None:
        self._command("call")

    def hang_up(self) -> None:
        self._command("hang_up")

    def ask(self) -> None:
        self._command("ask")

    def stop(self) -> None:
        self._stopping.set()
        self._ring.send(b"!")
        self.join(WAIT)
        self._ring.close()

    def _command(self, command: str) -> None:
        self._commands.put(command)
        self._ring.send(b"!")

    @property
    def busy(self) -> bool:
        """A call established or a request unanswered: not quiet."""
        return self.in_call or bool(self._waiting)

    @property
    def server(self) -> str:
        """The server that answered the last registration."""
        return self.registrations[-1].server

    def run(self) -> None:
        try:
            self._connect()
            while not self._stopping.is_set():
                # poll, not select: a thousand users' descriptors pass 1024.
                poller = select.poll()
                poller.register(self._sock, select.POLLIN)
                poller.register(self._bell, select.POLLIN)
                readable = {fd for fd, _ in poller.poll(1000)}
                if self._bell.fileno() in readable:
                    self._bell.recv(64)
                    while not self._commands.empty():
                        getattr(self, f"_{self._commands.get()}")()
                if self._sock.fileno() in readable:
                    self._read()
        except Exception as e:  # the test reports it
            self.error = f"u{self.n}: {e!r}"
        finally:
            self._sock.close()
            self._bell.close()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self.vip, WAIT)
        self._buffer = b""
        self._send(
            "REGISTER",
            b"sip:" + DOMAIN,
            b"reg-%d" % self.n,
            b"Contact: <sip:u%d@%s;transport=tcp>\r\nExpires: 3600\r\n"
            % (self.n, self._local()),
        )

    def _call(self) -> None:
        self._send("INVITE", b"sip:conference@" + DOMAIN, b"call-%d" % self.n)

    def _hang_up(self) -> None:
        self._send("BYE", b"sip:conference@" + DOMAIN, b"call-%d" % self.n)

    def _ask(self) -> None:
        self._send("MESSAGE", b"sip:bot@" + DOMAIN, b"msg-%d" % self.n)

    def _local(self) -> bytes:
        host, port = self._sock.getsockname()
        return b"%s:%d" % (host.encode(), port)

    def _send(
        self, method: str, uri: bytes, call_id: bytes, extra: bytes = b""
    ) -> None:
        self._cseq += 1
        self._waiting[self._cseq] = method
        self._request(method, uri, call_id, self._cseq, extra)

    def _request(
        self, method: str, uri: bytes, call_id: bytes, cseq: int, extra: bytes = b""
    ) -> None:
        in_call = method in {"ACK", "BYE"}
        to_tag = b";tag=" + self._call_tag if in_call else b""
        self._sock.sendall(
            b"%s %s SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bK-u%d-%d\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:u%d@%s>;tag=u%d\r\n"
            b"To: <%s>%s\r\nCall-ID: %s\r\nCSeq: %d %s\r\n%s"
            b"Content-Length: 0\r\n\r\n"
            % (
                *(method.encode(), uri, self._local(), self.n, cseq),
                *(self.n, DOMAIN, self.n, uri, to_tag, call_id, cseq),
                *(method.encode(), extra),
            )
        )

    def _read(self) -> None:
        try:
            data = self._sock.recv(65536)
        except ConnectionError:
            data = b""
        if not data:
            self._closed()
            return
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:  # the registrar sends no bodies
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            self._response(head.decode())

    def _response(self, head: str) -> None:
        status, *lines = head.split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines)
        number, method = fields["CSeq"].split()
        if not status.startswith("SIP/2.0 200 "):
            raise AssertionError(f"{method} answered {status}")
        now = time.monotonic()
        del self._waiting[int(number)]
        self.answered.append((now, f"200 {method}"))
        if method == "REGISTER":
            self.registrations.append(Registration(now, fields["Server"]))
        elif method == "INVITE":
            self._call_tag = fields["To"].partition(";tag=")[2].encode()
            self._request(
                "ACK", b"sip:conference@" + DOMAIN, b"call-%d" % self.n, int(number)
            )
            self.in_call = True
        elif method == "BYE":
            self.in_call = False

    def _closed(self) -> None:
        waiting = tuple(self._waiting.values())
        self.closes.append(Close(time.monotonic(), self.in_call, waiting))
        self._sock.close()
        self.in_call, self._waiting = False, {}
        self._connect()


@contextmanager
def users(count: int, vip: tuple[str, int]) -> Iterator[list[User]]:
    """``count`` users (u0, u1...), each registered once; stopped after."""
    started = [User(n, vip) for n in range(count)]
    try:
        for user in started:
            user.start()
        deadline = time.monotonic() + WAIT
        while not all(u.registrations or u.error for u in started):
            assert time.monotonic() < deadline, "users never all registered"
            time.sleep(0.05)
        yield started
    finally:
        for user in started:
            user.stop()
