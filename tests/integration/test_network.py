"""
NAT, the VIP and a highly available pair, on real networks of namespaces.

Each test builds its own network (netns.py): the client, the balancer(s)
running ``twistd -n ocsbal`` and the servers are separate hosts as far as
the kernel is concerned, so what a server sees is what it would see on a
LAN.  The servers greet each connection with the address it comes from,
then echo it.  Needs root; keepalived for the HA test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import WAIT, Process, pool_ini, require_tool
from netns import (
    KEEPALIVED,
    Keepalived,
    Lab,
    Line,
    Namespace,
    Pair,
    PeerEcho,
    echo,
    hello,
    lab,
    wait_for,
)

EXAMPLES = Path(__file__).parents[2] / "examples" / "keepalived"
PORT = 5062  # an OCS port relayed as plain TCP (A/V authentication)
PAYLOAD = 512 * 1024
FAILOVER_BOUND = 15.0  # seconds; keepalived as configured takes about 3


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as built:
        yield built


def servers_of(addresses: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    return {f"s{n}": (address, 1) for n, address in enumerate(addresses, 1)}


def line_pool(*sections: str, **pool: object) -> str:
    """A pool on the VIP of :class:`Line` with its two servers, on ``PORT``."""
    ini = pool_ini(Line.VIP, servers_of(Line.SERVERS), {PORT: "tcp"}, **pool)
    return "\n".join([ini, *sections])


def start_line(net: Lab, ini: str) -> tuple[Line, PeerEcho]:
    """Build a :class:`Line`, its servers, and ocsbal on ``ini``; wait for the VIP."""
    line = Line.build(net)
    servers = net.serve(line.servers, Line.SERVERS, PORT)
    balancer = net.twistd("ocsbal", line.balancer, ini)
    line.balancer.wait_listening(Line.VIP, PORT, balancer)
    return line, servers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_relayed_exactly(sock: socket.socket, servers: PeerEcho, size: int) -> None:
    """Random bytes sent on ``sock`` reach its server and come back unchanged."""
    payload = os.urandom(size)
    assert echo(sock, payload) == payload  # the server got EOF and echoed all
    finished = [a for a in servers.accepted if a.digest == sha256(payload)]
    assert len(finished) == 1, "the server did not receive exactly what was sent"
    assert finished[0].received == size


@pytest.mark.parametrize("source", [None, Line.SOURCE], ids=["routed", "source"])
def test_full_nat_servers_see_the_balancer(net: Lab, source: str | None) -> None:
    """Full NAT: connections and health checks reach the servers from the
    balancer's own address (the route's, or ``[pool] source``), never from
    the client's; the relay is byte-exact both ways."""
    # One process: its round robin sends the two connections to both servers.
    extra: dict[str, object] = {"workers": 1}
    if source is not None:
        extra["source"] = source
    monitor = "[monitor]\ninterval = 1\ntimeout = 1\n"
    line, servers = start_line(
        net, line_pool(monitor, scheduler="round-robin", **extra)
    )
    expected = source or Line.BACK
    answered = set()
    for _ in Line.SERVERS:
        with line.client.connect(Line.VIP, PORT) as sock:
            greeting = hello(sock)
            assert greeting.peer == expected
            answered.add(greeting.server)
            assert_relayed_exactly(sock, servers, PAYLOAD)
    assert answered == set(Line.SERVERS)
    # Health checks (every second) come from the same address.
    wait_for(lambda: len(servers.accepted) > 2, "a health check")
    assert servers.peers() == {expected}


def test_full_nat_spreads_server_connections_over_the_source_addresses(
    net: Lab,
) -> None:
    """Several ``[pool] source`` addresses (a SNAT pool): connections to the
    servers come from each in turn."""
    sources = f"{Line.BACK}, {Line.SOURCE}"
    line, _ = start_line(net, line_pool(source=sources, workers=1))
    seen = []
    for _ in range(4):
        with line.client.connect(Line.VIP, PORT) as sock:
            seen.append(hello(sock).peer)
    assert seen == [Line.BACK, Line.SOURCE] * 2


def test_a_source_address_out_of_ports_is_skipped_not_blamed(net: Lab) -> None:
    """With ten ephemeral ports, two source addresses carry about twenty
    connections to one server; past that the client is refused as this
    host's trouble, and the server stays up."""
    line = Line.build(net)
    line.balancer.sysctl("ipv4.ip_local_port_range", "40000 40009")
    server = Line.SERVERS[0]
    net.serve(line.servers, (server,), PORT)
    monitor = "[monitor]\ninterval = 300\ntimeout = 1\n"  # one check: one port
    ini = "\n".join(
        [
            pool_ini(
                Line.VIP,
                servers_of((server,)),
                {PORT: "tcp"},
                source=f"{Line.BACK}, {Line.SOURCE}",
                retries=0,
            ),
            monitor,
        ]
    )
    balancer = net.twistd("ocsbal", line.balancer, ini)
    line.balancer.wait_listening(Line.VIP, PORT, balancer)
    held: list[socket.socket] = []
    peers = []
    refused = 0
    try:
        for _ in range(30):  # bounded: 20 ports and a few refusals
            sock = line.client.connect(Line.VIP, PORT)
            try:
                peers.append(hello(sock).peer)
                held.append(sock)
            except ConnectionError:
                sock.close()
                refused += 1
                if refused == 3:
                    break
        # The health check's closed connection holds one port of the first.
        assert 18 <= len(held) <= 20, peers
        assert {peers.count(Line.BACK), peers.count(Line.SOURCE)} <= set(range(8, 11))
        assert refused == 3
    finally:
        for sock in held:
            sock.close()
    output = balancer.output
    assert "has no port left for connections to" in output
    assert "every source address is out of ports" in output
    assert " is down" not in output


def route_half_nat(balancer: Namespace, device: str, ports: list[int]) -> None:
    """The balancer's policy routing for half-NAT, one rule per VIP port.

    The servers answer each client's own address through their default
    route, the balancer.  These deliver what arrives on the server side
    (``device``) from a VIP port to the balancer itself, where ocsbal's
    transparent sockets take it, instead of forwarding it (or, here, dropping
    it: the balancer does not forward).  Works with strict rp_filter; needs
    no route_localnet or accept_local.
    """
    for port in ports:
        balancer.ip(
            *("rule", "add", "iif", device, "ipproto", "tcp", "sport", str(port)),
            *("lookup", "100"),
        )
    balancer.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")


def test_half_nat_servers_see_the_client(net: Lab) -> None:
    """Half-NAT (an edge pool): the server sees the client's own address, once
    the balancer routes the servers' replies to itself; byte-exact both ways."""
    ini = line_pool(kind="edge", nat="half", connect_timeout=1, retries=0)
    line, servers = start_line(net, ini)
    # Without the policy routing, the servers' replies never reach ocsbal.
    with line.client.connect(Line.VIP, PORT) as sock, pytest.raises(ConnectionError):
        hello(sock)
    route_half_nat(line.balancer, Line.BACK_DEVICE, [PORT])
    with line.client.connect(Line.VIP, PORT) as sock:
        greeting = hello(sock)
        assert greeting.peer == Line.CLIENT
        assert greeting.server in Line.SERVERS
        assert_relayed_exactly(sock, servers, PAYLOAD)


def test_hairpin_a_server_is_balanced_through_its_own_vip(net: Lab) -> None:
    """Full NAT: a server connecting to the VIP (as the servers of internal
    pools do) is balanced to every server, itself included, and answered."""
    # One process, whose round robin sends two connections to both servers.
    line, servers = start_line(net, line_pool(scheduler="round-robin", workers=1))
    own = Line.SERVERS[0]
    answered = []
    for _ in Line.SERVERS:
        with line.servers.connect(Line.VIP, PORT, source=own) as sock:
            greeting = hello(sock)
            assert greeting.peer == Line.BACK
            answered.append(greeting.server)
            assert_relayed_exactly(sock, servers, 64 * 1024)
    assert sorted(answered) == sorted(Line.SERVERS)  # one of them was itself


def test_client_resolves_the_vip_to_the_balancer_by_arp(net: Lab) -> None:
    """The client, on the VIP's subnet, holds the VIP in its neighbour table
    with the MAC of the balancer's client-side interface."""
    line, _ = start_line(net, line_pool())
    assert Line.VIP not in line.client.neighbours("eth0")
    with line.client.connect(Line.VIP, PORT) as sock:
        hello(sock)
    mac = line.balancer.mac(Line.FRONT_DEVICE)
    assert line.client.neighbours("eth0")[Line.VIP] == mac


@pytest.mark.parametrize(
    ("pool", "reason"),
    [
        (
            {"kind": "enterprise", "nat": "half"},
            "[pool] nat = half: half-NAT is refused for enterprise pools",
        ),
        (
            {"kind": "edge", "nat": "dsr"},
            "[pool] nat = dsr: Direct Server Return is not supported",
        ),
    ],
    ids=["half-nat-internal", "dsr"],
)
def test_check_refuses_nat_modes_ocs_cannot_use(
    tmp_path: Path, pool: dict[str, str], reason: str
) -> None:
    """``ocsbal check`` exits 1 giving the reason, for half-NAT on an internal
    pool and for Direct Server Return."""
    config = tmp_path / "pool.ini"
    config.write_text(line_pool(**pool))
    ocsbal = str(Path(sys.executable).with_name("ocsbal"))
    done = subprocess.run(
        [ocsbal, "check", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stdout
    assert f"{config}: {reason}" in done.stderr


def test_vip_not_held_stops_the_start_unless_freebind(net: Lab) -> None:
    """twistd exits 1 naming a VIP this host does not hold; with freebind =
    yes it starts, and serves the VIP as soon as it is added (a standby)."""
    vip = "10.77.1.20"  # on the client's subnet, but on no interface
    line = Line.build(net)
    net.serve(line.servers, Line.SERVERS, PORT)
    servers = servers_of(Line.SERVERS)
    refused = net.twistd(
        "refused", line.balancer, pool_ini(vip, servers, {PORT: "tcp"})
    )
    assert refused.wait() == 1
    assert f"[pool] vip = {vip} is not an address of this host" in refused.output
    assert not line.balancer.listening(vip, PORT)
    ini = pool_ini(vip, servers, {PORT: "tcp"}, freebind="yes")
    standby = net.twistd("standby", line.balancer, ini)
    line.balancer.wait_listening(vip, PORT, standby)
    line.balancer.ip("addr", "add", f"{vip}/24", "dev", Line.FRONT_DEVICE)
    with line.client.connect(vip, PORT) as sock:
        assert hello(sock).peer == Line.BACK


def keepalived_config(example: str, script: Path) -> str:
    """examples/keepalived/EXAMPLE, for :class:`Pair`: only its VIP and the
    check script's path differ (its interface is eth0 already)."""
    text = (EXAMPLES / example).read_text()
    assert f"interface {Pair.DEVICE}" in text
    for old, new in {
        "10.0.0.10/24 dev eth0": f"{Pair.VIP}/24 dev {Pair.DEVICE}",
        '"/etc/keepalived/check-ocsbal"': f'"{script}"',
    }.items():
        assert old in text, f"{example} no longer holds {old}"
        text = text.replace(old, new)
    return text


def through(pair: Pair) -> str | None:
    """The balancer relaying a new connection from the client; None if none."""
    try:
        with pair.client.connect(Pair.VIP, PORT, timeout=0.5) as sock:
            return hello(sock).peer
    except OSError:
        return None


def test_ha_pair_with_keepalived_fails_over_when_ocsbal_dies(
    net: Lab, capsys: pytest.CaptureFixture[str], record_property: Callable[..., None]
) -> None:
    """Two balancers, each running ocsbal (freebind) and keepalived from
    examples/keepalived: when the VIP holder's ocsbal is killed, new client
    connections go through the other within seconds.  With nopreempt the VIP
    stays there when the first comes back, which is a standby again: killing
    the second's ocsbal moves it back."""
    require_tool(KEEPALIVED, "keepalived")
    require_tool("/usr/bin/curl", "curl")  # check-ocsbal asks the admin API
    pair = Pair.build(net)
    lb1, lb2 = pair.balancers
    net.serve(pair.servers, Pair.SERVERS, PORT)
    ini = (
        pool_ini(Pair.VIP, servers_of(Pair.SERVERS), {PORT: "tcp"}, freebind="yes")
        + "\n[admin]\nlisten = tcp:9900:interface=127.0.0.1\n"
    )

    def ocsbal(namespace: Namespace, name: str) -> Process:
        process = net.twistd(name, namespace, ini)
        namespace.wait_listening(Pair.VIP, PORT, process)
        namespace.wait_listening("127.0.0.1", 9900, process)
        return process

    script = net.tmp_path / "check-ocsbal"
    shutil.copy(EXAMPLES / "check-ocsbal", script)
    script.chmod(0o755)
    ocsbal1, ocsbal2 = ocsbal(lb1, "ocsbal-lb1"), ocsbal(lb2, "ocsbal-lb2")
    ka1 = Keepalived.start(
        net, "keepalived-lb1", lb1, keepalived_config("keepalived-lb1.conf", script)
    )
    wait_for(lambda: Pair.VIP in lb1.addresses(Pair.DEVICE), "lb1 holding the VIP")
    ka2 = Keepalived.start(
        net, "keepalived-lb2", lb2, keepalived_config("keepalived-lb2.conf", script)
    )
    wait_for(lambda: ka2.entered("BACKUP") > 0, "lb2 the backup")
    assert through(pair) == Pair.BALANCERS[0]

    ocsbal1.popen.kill()  # SIGKILL
    failover = wait_for(
        lambda: through(pair) == Pair.BALANCERS[1], "failover to lb2", FAILOVER_BOUND
    )
    assert Pair.VIP not in lb1.addresses(Pair.DEVICE)
    assert pair.client.neighbours(Pair.DEVICE)[Pair.VIP] == lb2.mac(Pair.DEVICE)

    backups = ka1.entered("BACKUP")
    ocsbal(lb1, "ocsbal-lb1-again")
    wait_for(lambda: ka1.entered("BACKUP") > backups, "lb1 the backup")
    time.sleep(2)  # two adverts: lb1 would have taken the VIP back by now
    assert ka1.entered("MASTER") == 1
    assert through(pair) == Pair.BALANCERS[1]

    ocsbal2.popen.kill()
    failback = wait_for(
        lambda: through(pair) == Pair.BALANCERS[0], "failover to lb1", FAILOVER_BOUND
    )
    record_property("failover_seconds", f"{failover:.2f}")
    record_property("failback_seconds", f"{failback:.2f}")
    with capsys.disabled():
        print(
            f"\n  keepalived failover: lb1 -> lb2 in {failover:.2f} s, "
            f"lb2 -> lb1 in {failback:.2f} s"
        )
