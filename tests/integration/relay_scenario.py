"""A pool embedded in a process of its own, relaying on real loopback sockets.

Run by test_relay_live.py, so that the real reactor runs here and not in
pytest.  A :class:`PoolService` (as an embedder adds one) relays
127.0.83.10:16000 to an echo server on 127.0.83.11.  A client pushes 16 MB
of numbered bytes while it reads nothing for half a second, then reads it
all back, then plays 500 rounds of a 64-byte ping-pong.  Each relay transport's calls to
``startWriting`` (Twisted's buffered path) are counted in each phase: the
ping-pong must take none, every byte going through the write-through path,
and the push some, back-pressure taking Twisted's buffer.  It prints the
results as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater, react
from twisted.protocols.wire import Echo

from ocsbal import Pool, PoolService, Port, Server
from ocsbal._sides import Side
from ocsbal.config import Monitor

VIP, SERVER, PORT = "127.0.83.10", "127.0.83.11", 16000
PUSH = 16 << 20  # more than the kernels' buffers on the way hold

#: startWriting calls on the relay's own transports, by phase; the phase
#: under way is the last key.
buffered: dict[str, int] = {"push": 0}
_start_writing = tcp.Connection.startWriting


def counting_start_writing(self: tcp.Connection) -> None:
    if isinstance(self.protocol, Side):
        buffered[next(reversed(buffered))] += 1
    _start_writing(self)


tcp.Connection.startWriting = counting_start_writing  # type: ignore[method-assign]


class Client(Protocol):
    """Writes what it is told, and keeps what comes back."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.waiting: tuple[int, Deferred[None]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.waiting and len(self.received) >= self.waiting[0]:
            _, d = self.waiting
            self.waiting = None
            d.callback(None)

    def until(self, size: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting = (size, d)
        self.dataReceived(b"")
        return d


async def main(reactor: Any) -> None:
    reactor.listenTCP(PORT, Factory.forProtocol(Echo), interface=SERVER)
    pool = Pool(
        "embedded",
        "embedded.example.com",
        VIP,
        [Server("fe1", SERVER)],
        ports=[Port(PORT)],
        monitor=Monitor(interval=60, timeout=1),
    )
    service = PoolService(pool, reactor)
    service.startService()
    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, VIP, PORT)
    await connectProtocol(endpoint, client)
    pushed = bytes(i % 251 for i in range(PUSH))
    client.transport.pauseProducing()  # reading nothing, at first
    for start in range(0, PUSH, 65536):  # the client's own buffer takes it
        client.transport.write(pushed[start : start + 65536])
    await deferLater(reactor, 0.5, lambda: None)
    client.transport.resumeProducing()
    await client.until(PUSH)
    echoed_whole = bytes(client.received) == pushed
    buffered["ping-pong"] = 0
    client.received.clear()
    for n in range(500):
        message = b"%064d" % n
        client.transport.write(message)
        await client.until(64)
        assert bytes(client.received) == message, (n, bytes(client.received))
        client.received.clear()
    buffered["close"] = 0
    client.transport.loseConnection()
    await deferLater(reactor, 0.1, lambda: None)
    await service.stopService()
    json.dump({"echoed_whole": echoed_whole, "buffered": buffered}, sys.stdout)


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor)))
