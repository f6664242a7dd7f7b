"""TLS termination on sips ports, in memory: real TLS, a memory reactor and clock.

Clients, the balancer and the servers speak real TLS (pyOpenSSL through
Twisted's TLS) over in-memory transports that the tests pump, with
certificates from trustme.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from ocsbal._listener import Listener
from ocsbal._pool import RunningPool
from ocsbal._relay import Relay
from ocsbal._tls import TLSSetupError, tls_contexts, tls_problems
from ocsbal.config import Pool, Port, PortProtocol, Server, TLSMode, TLSSettings

SIPS = Port(5061, PortProtocol.SIPS)
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
PEER = "127.0.0.1:40000"  # as log lines give a client
FQDN = "pool01.example.com"
REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\nTo: <sip:alice@example.com>\r\n"
    b"Call-ID: c1\r\nCSeq: 7 REGISTER\r\nContact: <sip:alice@10.1.0.5>\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REGISTERED = (
    b"SIP/2.0 200 OK\r\nCall-ID: c1\r\nCSeq: 7 REGISTER\r\n"
    b"Contact: <sip:alice@10.1.0.5>;expires=900\r\nContent-Length: 0\r\n\r\n"
)


@attrs.define
class PKI:
    """A CA, the pool's certificate and the balancer's client certificate."""

    directory: Path
    ca: trustme.CA = attrs.Factory(trustme.CA)

    def write(self, name: str, *identities: str) -> str:
        """A PEM file of a key and a certificate for ``identities``."""
        path = self.directory / name
        cert = self.ca.issue_cert(*identities)
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return str(path)

    def trust(self) -> str:
        path = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def server_options(self, name: str, require_client: bool = False) -> Any:
        """What a server with a certificate for ``name`` handshakes with."""
        own = PrivateCertificate.loadPEM(
            Path(self.write(f"{name}.pem", name)).read_bytes()
        )
        if require_client:
            return own.options(Certificate.loadPEM(self.ca.cert_pem.bytes()))
        return own.options()

    def client_options(self, name: str = FQDN) -> Any:
        """What a client that trusts the CA and expects ``name`` handshakes with."""
        return optionsForClientTLS(
            name, trustRoot=Certificate.loadPEM(self.ca.cert_pem.bytes())
        )


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def terminating_pool(pki: PKI, servers: int = 2, **tls: Any) -> Pool:
    settings = {
        "mode": TLSMode.TERMINATE,
        "certificate": pki.write("pool.pem", FQDN),
        "trust": pki.trust(),
        **tls,
    }
    return Pool(
        name="pool01",
        fqdn=FQDN,
        vip="127.0.1.10",
        servers=tuple(
            Server(f"fe{i}", f"127.0.1.{11 + i}", tls_name=f"fe{i}.example.com")
            for i in range(servers)
        ),
        ports=(SIPS,),
        scheduler="round-robin",
        tls=TLSSettings(**settings),
    )


class Peer(Protocol):
    """A TLS client or server that keeps what it reads."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class Network:
    """A terminating balancer on a memory reactor; clients and servers pumped."""

    def __init__(self, pool: Pool) -> None:
        self.reactor = MemoryReactorClock()
        self.servers = RunningPool(pool, self.reactor.seconds)
        self.relay = Relay(self.servers, self.reactor)
        self.pumps: list[iosim.IOPump] = []
        self.log: list[str] = []

    def connect_client(self, tls: Any) -> Peer:
        """A client connects to the VIP's sips port and handshakes with ``tls``."""
        client = Peer()
        factory = Listener(self.relay, SIPS).factory()
        accepted = factory.buildProtocol(CLIENT)
        connecting = self._tls(tls, True, client)
        self._pump(accepted, CLIENT, connecting)
        return client

    def answer(self, tls: Any) -> Peer:
        """The balancer's latest connection attempt reaches a server."""
        server = Peer()
        _, _, factory, *_ = self.reactor.tcpClients.pop()
        factory.doStart()
        connecting = factory.buildProtocol(None)
        self._pump(self._tls(tls, False, server), None, connecting)
        return server

    def _tls(self, tls: Any, client: bool, peer: Peer) -> Any:
        """``peer`` speaking TLS with the options ``tls``."""
        wrapped = TLSMemoryBIOFactory(
            tls, client, Factory.forProtocol(lambda: peer), self.reactor
        )
        return wrapped.buildProtocol(None)

    def _pump(self, accepted: Any, peer: IPv4Address | None, connecting: Any) -> None:
        """Connect two protocols in memory, the first having accepted."""
        self.pumps.append(
            iosim.connect(
                accepted,
                iosim.FakeTransport(accepted, isServer=True, peerAddress=peer),
                connecting,
                iosim.makeFakeClient(connecting),
                greet=False,
                clock=self.reactor,
            )
        )

    def connected(self, pki: PKI) -> tuple[Peer, Peer]:
        """A client handshaken through the balancer to server fe0."""
        client = self.connect_client(pki.client_options())
        self.flush()
        server = self.answer(pki.server_options("fe0.example.com"))
        self.flush()
        return client, server

    def register(self) -> None:
        """The client sends REGISTER, the server answers REGISTERED."""
        self.pumps[0].client.write(REGISTER)  # the client's TLS transport
        self.flush()
        self.pumps[1].server.write(REGISTERED)
        self.flush()

    def flush(self) -> None:
        for _ in range(20):
            if not any([pump.flush() for pump in self.pumps]):  # noqa: C419 -- each
                return

    def __enter__(self) -> Network:
        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if (
            event.get("log_namespace") == "ocsbal"
            and event["log_level"] >= LogLevel.info
        ):
            self.log.append(formatEvent(event))


def test_the_client_handshakes_with_the_pool_and_the_server_with_its_own_name(
    pki: PKI,
) -> None:
    with Network(terminating_pool(pki)) as net:
        client = net.connect_client(pki.client_options())
        net.flush()
        assert len(net.reactor.tcpClients) == 1  # a server is picked after it
        server = net.answer(pki.server_options("fe0.example.com"))
        net.flush()
        net.register()
    assert server.received == REGISTER
    assert client.received == REGISTERED
    [splice] = net.relay.splices
    assert splice.sip is not None  # decrypted, the SIP is followed as on 5060
    assert splice.sip.bindings == {"sip:alice@example.com": 900}
    assert net.log == []


def test_with_inspect_off_the_decrypted_sip_is_relayed_unread(pki: PKI) -> None:
    with Network(terminating_pool(pki, inspect=False)) as net:
        client, server = net.connected(pki)
        net.register()
    assert server.received == REGISTER
    assert client.received == REGISTERED
    [splice] = net.relay.splices
    assert splice.sip is None
    assert splice.client.inspector is None
    assert splice.server is not None
    assert splice.server.inspector is None
    assert net.relay.sip.requests == {}


@pytest.mark.parametrize("closing", ["server", "client"])
def test_a_peer_that_closes_after_its_last_message_closes_the_other_after_it(
    pki: PKI, closing: str
) -> None:
    # A TLS transport closes only once no producer is registered on it: the
    # side left must let go of its peer's, or it would stay open for ever.
    with Network(terminating_pool(pki)) as net:
        client, server = net.connected(pki)
        if closing == "server":
            net.pumps[1].server.write(REGISTERED)
            net.pumps[1].server.loseConnection()
        else:
            net.pumps[0].client.write(REGISTER)
            net.pumps[0].client.loseConnection()
        net.flush()
    assert client.lost
    assert server.lost
    assert (client.received, server.received) == (
        (REGISTERED, b"") if closing == "server" else (b"", REGISTER)
    )
    assert net.relay.splices == set()


def test_what_the_client_sends_with_its_handshake_waits_for_the_server(
    pki: PKI,
) -> None:
    with Network(terminating_pool(pki)) as net:
        net.connect_client(pki.client_options())
        net.pumps[0].client.write(REGISTER)  # buffered by TLS until handshaken
        net.flush()
        server = net.answer(pki.server_options("fe0.example.com"))
        net.flush()
    assert server.received == REGISTER


def test_a_server_whose_certificate_has_another_name_is_a_failed_attempt(
    pki: PKI,
) -> None:
    with Network(terminating_pool(pki)) as net:
        net.connect_client(pki.client_options())
        net.flush()
        impostor = net.answer(pki.server_options("mallory.example.com"))
        net.flush()
        assert len(net.reactor.tcpClients) == 1  # the next server is tried
        server = net.answer(pki.server_options("fe1.example.com"))
        net.flush()
        net.pumps[0].client.write(b"hello")
        net.flush()
    assert impostor.received == b""
    assert server.received == b"hello"
    backends = net.servers.backends
    assert (backends["fe0"].active, backends["fe1"].active) == (0, 1)
    assert net.log == [
        f"connection from {PEER} to server fe0 (127.0.1.11:5061) failed: "
        "TLS handshake failed: certificate not issued to fe0.example.com"
    ]


def test_a_server_signed_by_another_authority_is_refused(
    pki: PKI, tmp_path: Path
) -> None:
    other = PKI(tmp_path / "other")
    other.directory.mkdir()
    with Network(terminating_pool(pki, servers=1)) as net:
        client = net.connect_client(pki.client_options())
        net.flush()
        net.answer(other.server_options("fe0.example.com"))
        net.flush()
    assert client.lost
    assert "certificate verify failed" in net.log[0]
    assert net.log[-1].startswith(f"rejected connection from {PEER}")


def test_the_balancer_presents_its_client_certificate_to_servers(pki: PKI) -> None:
    pool = terminating_pool(pki, client_certificate=pki.write("lb.pem", "lb"))
    with Network(pool) as net:
        net.connect_client(pki.client_options())
        net.flush()
        server = net.answer(pki.server_options("fe0.example.com", require_client=True))
        net.flush()
        net.pumps[0].client.write(b"hello")
        net.flush()
    assert server.received == b"hello"


def test_a_client_that_never_handshakes_is_cut_off_with_one_line(pki: PKI) -> None:
    with Network(terminating_pool(pki)) as net:
        net.connect_client(pki.client_options())  # never pumped: no ClientHello
        net.reactor.advance(9.9)
        assert not net.pumps[0].serverIO.disconnecting
        net.reactor.advance(0.1)
        assert net.pumps[0].serverIO.disconnecting
        net.flush()
    assert net.log == [
        f"TLS client {PEER} on port 5061 dropped: no TLS handshake within 10 s"
    ]
    assert net.reactor.tcpClients == []
    assert net.relay.splices == set()


def test_garbage_instead_of_a_client_hello_costs_one_line(pki: PKI) -> None:
    with Network(terminating_pool(pki)) as net:
        net.connect_client(pki.client_options())
        net.pumps[0].serverIO.bufferReceived(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        net.flush()
        net.reactor.advance(60)
    [line] = net.log
    assert line.startswith(
        f"TLS client {PEER} on port 5061 dropped: TLS handshake failed: "
    )
    assert net.reactor.tcpClients == []
    assert net.relay.splices == set()


class TestSetUp:
    def test_passthrough_builds_nothing(self, pki: PKI) -> None:
        pool = attrs.evolve(terminating_pool(pki), tls=TLSSettings())
        assert tls_contexts(pool) is None

    def test_the_pool_certificate_must_carry_the_fqdn(self, pki: PKI) -> None:
        pool = terminating_pool(pki)
        bad = attrs.evolve(
            pool.tls, certificate=pki.write("bad.pem", "other.example.com", "10.0.0.1")
        )
        with pytest.raises(TLSSetupError) as raised:
            tls_contexts(attrs.evolve(pool, tls=bad))
        assert str(raised.value) == (
            f"[tls] certificate = {bad.certificate}: is not issued to the pool fqdn "
            f"{FQDN} (its names: other.example.com, 10.0.0.1); clients would "
            "refuse it"
        )

    def test_a_wildcard_certificate_does(self, pki: PKI) -> None:
        pool = terminating_pool(pki)
        wildcard = attrs.evolve(
            pool.tls, certificate=pki.write("w.pem", "*.example.com")
        )
        assert tls_contexts(attrs.evolve(pool, tls=wildcard)) is not None

    @pytest.mark.parametrize(
        ("key", "content", "message"),
        [
            ("certificate", None, "cannot read: No such file or directory"),
            ("certificate", b"junk", "holds no PEM certificate"),
            ("certificate", "ca", "holds no usable PEM private key (it must"),
            ("trust", b"", "holds no PEM certificate"),
            ("client_certificate", "ca", "holds no usable PEM private key"),
        ],
    )
    def test_each_unusable_file_is_named_with_why(
        self, pki: PKI, key: str, content: bytes | str | None, message: str
    ) -> None:
        path = pki.directory / "bad.pem"
        if content == "ca":
            pki.ca.cert_pem.write_to_path(str(path))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        pool = terminating_pool(pki)
        pool = attrs.evolve(pool, tls=attrs.evolve(pool.tls, **{key: str(path)}))
        with pytest.raises(TLSSetupError) as raised:
            tls_contexts(pool)
        assert str(raised.value).startswith(f"[tls] {key} = {path}: {message}")

    def test_every_unusable_file_is_named_at_once(self, pki: PKI) -> None:
        junk = pki.directory / "junk.pem"
        junk.write_bytes(b"junk")
        missing = str(pki.directory / "missing.pem")
        pool = terminating_pool(pki)
        tls = attrs.evolve(
            pool.tls, certificate=str(junk), trust=missing, client_certificate=missing
        )
        with pytest.raises(TLSSetupError) as raised:
            tls_contexts(attrs.evolve(pool, tls=tls))
        assert str(raised.value).splitlines() == [
            f"[tls] certificate = {junk}: holds no PEM certificate",
            f"[tls] trust = {missing}: cannot read: No such file or directory; give "
            "a PEM file of the authorities that sign the servers' certificates",
            f"[tls] client_certificate = {missing}: cannot read: No such file or "
            "directory; give a PEM file of a private key and certificate to "
            "present to servers",
        ]
        assert tls_problems(tls, FQDN) == list(raised.value.problems)

    def test_without_a_known_fqdn_the_certificate_name_is_not_checked(
        self, pki: PKI
    ) -> None:
        tls = terminating_pool(pki).tls
        other = attrs.evolve(tls, certificate=pki.write("o.pem", "other.example.com"))
        assert tls_problems(tls, FQDN) == []
        assert [key for key, _, _ in tls_problems(other, FQDN)] == ["certificate"]
        assert tls_problems(other, None) == []

    def test_a_key_that_is_not_the_certificates(self, pki: PKI) -> None:
        mixed = pki.directory / "mixed.pem"
        one = pki.ca.issue_cert(FQDN)
        other = pki.ca.issue_cert(FQDN)
        mixed.write_bytes(
            other.private_key_pem.bytes() + one.cert_chain_pems[0].bytes()
        )
        pool = terminating_pool(pki)
        pool = attrs.evolve(pool, tls=attrs.evolve(pool.tls, certificate=str(mixed)))
        with pytest.raises(TLSSetupError) as raised:
            tls_contexts(pool)
        assert str(raised.value) == (
            f"[tls] certificate = {mixed}: its private key is not its certificate's"
        )


def test_a_client_that_closes_before_its_handshake_costs_nothing(pki: PKI) -> None:
    """TCP probes and port scanners connect and close: no line for them."""
    with Network(terminating_pool(pki)) as net:
        net.connect_client(pki.client_options())
        client = net.pumps[0].clientIO
        client.getOutBuffer()  # its ClientHello is never sent
        client.loseConnection()
        net.flush()
    assert net.log == []
    assert net.relay.splices == set()
