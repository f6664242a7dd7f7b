"""The pool model and its INI file: what is read, what is refused, and how."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocsbal.config import (
    OCS_PORTS,
    Admin,
    ConfigError,
    Limits,
    LogSettings,
    Monitor,
    MonitorType,
    NatMode,
    Pool,
    PoolKind,
    Port,
    PortProtocol,
    Problem,
    Server,
    TLSMode,
    TLSSettings,
    load,
    parse,
    render,
)
from ocsbal.scheduling import SCHEDULERS

EXAMPLES = Path(__file__).parents[1] / "examples"

MINIMAL = """
[pool]
name = p
fqdn = p.example.com
vip = 10.0.0.10

[server:fe1]
address = 10.0.0.11
"""


def problems(text: str) -> list[str]:
    """The problem lines of ``text``, read as ``t.ini``."""
    with pytest.raises(ConfigError) as raised:
        parse(text, "t.ini")
    return [str(p) for p in raised.value.problems]


def with_key(section: str, key: str, value: str, text: str = MINIMAL) -> str:
    """``text`` with ``key = value`` set in ``[section]``, added if need be."""
    if f"[{section}]\n" not in text:
        return f"{text}\n[{section}]\n{key} = {value}\n"
    head, _, body = text.partition(f"[{section}]\n")
    lines = [line for line in body.split("\n") if not line.startswith(f"{key} =")]
    return f"{head}[{section}]\n{key} = {value}\n" + "\n".join(lines)


def with_pool_key(key: str, value: str) -> str:
    return with_key("pool", key, value)


class TestExamples:
    def test_the_enterprise_pool(self) -> None:
        pool = load(EXAMPLES / "pool.ini")
        assert pool.name == "pool01"
        assert pool.fqdn == "pool01.contoso.com"
        assert pool.vip == "10.0.0.10"
        assert pool.kind is PoolKind.ENTERPRISE
        assert pool.nat is NatMode.FULL
        assert pool.scheduler == "weighted-least-connections"
        assert pool.ports == OCS_PORTS
        assert [(s.name, s.address, s.weight) for s in pool.servers] == [
            ("fe01", "10.0.0.11", 100),
            ("fe02", "10.0.0.12", 100),
            ("fe03", "10.0.0.13", 100),
        ]
        assert (pool.idle_timeout, pool.connect_timeout, pool.retries) == (1800, 5, 2)

    def test_the_edge_pool(self) -> None:
        pool = load(EXAMPLES / "edge.ini")
        assert pool.kind is PoolKind.EDGE
        assert len(pool.servers) == 2

    def test_the_demo_pool_is_on_loopback_on_every_ocs_port(self) -> None:
        pool = load(EXAMPLES / "demo.ini")
        assert pool.vip == "127.0.0.10"
        assert [s.address for s in pool.servers] == [
            "127.0.0.11",
            "127.0.0.12",
            "127.0.0.13",
        ]
        assert pool.ports == OCS_PORTS


class TestDefaults:
    def test_everything_but_name_fqdn_vip_and_a_server_has_a_default(self) -> None:
        pool = parse(MINIMAL)
        assert pool == Pool(
            name="p",
            fqdn="p.example.com",
            vip="10.0.0.10",
            servers=(Server("fe1", "10.0.0.11", weight=100),),
            ports=OCS_PORTS,
            kind=PoolKind.ENTERPRISE,
            nat=NatMode.FULL,
            scheduler="weighted-least-connections",
            idle_timeout=1800.0,
            connect_timeout=5.0,
            retries=2,
        )

    def test_the_ocs_port_list(self) -> None:
        assert [(p.number, p.protocol.value) for p in OCS_PORTS] == [
            (5060, "sip"),
            (5061, "sips"),
            *((n, "tcp") for n in (135, 443, 444, 5065, 5069, 5071, 5072, 5073)),
            (5074, "tcp"),
            (8404, "tcp"),
        ]

    def test_a_ports_section_replaces_the_default_list(self) -> None:
        pool = parse(MINIMAL + "[ports]\n15060 = sip\n15061 = SIPS\n8000 = tcp\n")
        assert pool.ports == (
            Port(15060, PortProtocol.SIP),
            Port(15061, PortProtocol.SIPS),
            Port(8000, PortProtocol.TCP),
        )


class TestMonitor:
    def test_defaults_are_the_ocs_heartbeat(self) -> None:
        pool = parse(MINIMAL)
        assert pool.monitor == Monitor(MonitorType.TCP, (), 5, 2, 2, 2)
        assert pool.heartbeat_ports == (5061, 5060, 444)

    def test_every_key(self) -> None:
        text = MINIMAL + (
            "[monitor]\ntype = tcp\nports = 5060,444 5061\ninterval = 1\n"
            "timeout = 0.5\nrise = 3\nfall = 4\n"
        )
        assert parse(text).monitor == Monitor(
            MonitorType.TCP, (5060, 444, 5061), 1, 0.5, 3, 4
        )

    def test_https_with_a_url(self) -> None:
        text = MINIMAL + "[monitor]\ntype = https\nports = 443\nurl = /health?x=1\n"
        monitor = parse(text).monitor
        assert (monitor.type, monitor.url) == (MonitorType.HTTPS, "/health?x=1")

    def test_the_effective_ports_are_shown_when_rendered(self) -> None:
        assert "ports = ; by default: 5061, 5060, 444\n" in render(parse(MINIMAL))


class TestAdmin:
    def test_no_section_no_admin_interface(self) -> None:
        assert parse(MINIMAL).admin is None

    def test_an_empty_section_listens_on_loopback(self) -> None:
        assert parse(MINIMAL + "[admin]\n").admin == Admin(
            "tcp:9900:interface=127.0.0.1"
        )

    def test_every_key(self) -> None:
        text = MINIMAL + (
            "[admin]\nlisten = unix:/run/a.sock\ntoken_file = /etc/t\n"
            "hosts = LB1.contoso.com, ocsbal\n"
        )
        assert parse(text).admin == Admin(
            "unix:/run/a.sock", "/etc/t", ("lb1.contoso.com", "ocsbal")
        )


class TestTLS:
    def test_no_section_passes_tls_through(self) -> None:
        assert parse(MINIMAL).tls == TLSSettings()
        assert parse(MINIMAL).tls.mode is TLSMode.PASSTHROUGH

    def test_terminate_with_files_taken_from_the_files_directory(
        self, tmp_path: Path
    ) -> None:
        ini = tmp_path / "pool.ini"
        ini.write_text(
            MINIMAL.replace(
                "address = 10.0.0.11",
                "address = 10.0.0.11\ntls_name = FE01.Contoso.com.",
            )
            + "[tls]\nmode = terminate\ncertificate = pool.pem\n"
            "trust = /etc/ca.pem\nclient_certificate = certs/lb.pem\n"
            "handshake_timeout = 2.5\ninspect = no\n"
        )
        pool = load(ini)
        assert pool.tls == TLSSettings(
            TLSMode.TERMINATE,
            str(tmp_path / "pool.pem"),
            "/etc/ca.pem",
            str(tmp_path / "certs" / "lb.pem"),
            2.5,
            inspect=False,
        )
        assert pool.servers[0].tls_name == "fe01.contoso.com"
        assert pool.servers[0].certificate_name == "fe01.contoso.com"

    def test_a_servers_certificate_name_is_its_address_by_default(self) -> None:
        assert Server("fe1", "10.0.0.11").certificate_name == "10.0.0.11"
        assert Server("fe1", "10.0.0.11", tls_name="::1").certificate_name == "::1"

    def test_terminate_needs_the_pools_certificate(self) -> None:
        assert problems(MINIMAL + "[tls]\nmode = terminate\n") == [
            "t.ini: [tls] certificate = : is required with mode = terminate: "
            "the pool's key and certificate, which clients verify"
        ]


class TestValues:
    @pytest.mark.parametrize("name", sorted(SCHEDULERS))
    def test_every_scheduler_name(self, name: str) -> None:
        assert parse(with_pool_key("scheduler", name)).scheduler == name

    def test_a_custom_scheduler_class(self) -> None:
        spec = "ocsbal.scheduling:RoundRobin"
        assert parse(with_pool_key("scheduler", spec)).scheduler == spec

    def test_addresses_and_names_are_written_one_way(self) -> None:
        text = MINIMAL.replace("10.0.0.10", "2001:DB8:0::10").replace(
            "p.example.com", "P.Example.COM."
        )
        pool = parse(text.replace("10.0.0.11", "2001:db8::0:11"))
        assert (pool.vip, pool.servers[0].address) == ("2001:db8::10", "2001:db8::11")
        assert pool.fqdn == "p.example.com"

    def test_enum_values_ignore_case(self) -> None:
        assert parse(with_pool_key("kind", "Edge")).kind is PoolKind.EDGE

    def test_half_nat_is_allowed_for_edge_pools(self) -> None:
        pool = parse(MINIMAL.replace("[pool]\n", "[pool]\nkind = edge\nnat = half\n"))
        assert pool.nat is NatMode.HALF

    def test_weight_zero_is_allowed(self) -> None:
        pool = parse(MINIMAL + "weight = 0\n")
        assert pool.servers[0].weight == 0

    def test_comments_and_continuation_lines_as_in_the_issue(self) -> None:
        text = with_pool_key(
            "scheduler", "round-robin ; how\n    ; round-robin | least-connections"
        )
        assert parse(text).scheduler == "round-robin"


#: One bad value of every key: (section, key, value, what the message says).
BAD_VALUES = [
    ("pool", "name", "two words", "must be 1 to 63 letters"),
    ("pool", "fqdn", "pool01", "must be a fully qualified DNS name"),
    ("pool", "fqdn", "-bad-.example.com", "must be a fully qualified DNS name"),
    ("pool", "vip", "pool01.contoso.com", "not a host name"),
    ("pool", "vip", "0.0.0.0", "must be one host's unicast address"),
    ("pool", "vip", "224.0.0.1", "must be one host's unicast address"),
    (
        "pool",
        "kind",
        "front-end",
        "must be one of enterprise, director, web-access, edge",
    ),
    ("pool", "nat", "snat", "must be one of full, half"),
    ("pool", "nat", "dsr", "Direct Server Return is not supported by OCS 2007 R2"),
    ("pool", "scheduler", "fastest", "unknown scheduler"),
    ("pool", "scheduler", "no.such.module:Thing", "no.such.module"),
    ("pool", "idle_timeout", "0", "must be a number of seconds greater than 0"),
    ("pool", "idle_timeout", "30m", "must be a number of seconds greater than 0"),
    ("pool", "idle_timeout", "inf", "must be a number of seconds greater than 0"),
    ("pool", "connect_timeout", "-1", "must be a number of seconds greater than 0"),
    ("pool", "retries", "-1", "must be a whole number, 0 or more"),
    ("pool", "retries", "2.5", "must be a whole number, 0 or more"),
    ("pool", "registration_grace", "0", "must be a number of seconds greater than 0"),
    ("pool", "reap_expired", "maybe", "must be yes or no"),
    ("pool", "source", "lb01.contoso.com", "not a host name"),
    ("pool", "freebind", "maybe", "must be yes or no"),
    ("pool", "workers", "0", "must be auto or a whole number from 1 to 64"),
    ("pool", "workers", "all", "must be auto or a whole number from 1 to 64"),
    ("pool", "workers", "65", "must be auto or a whole number from 1 to 64"),
    ("pool", "old_workers_timeout", "0", "must be a number of seconds greater than 0"),
    ("pool", "slowstart", "-1", "must be a number of seconds, 0 (off) or more"),
    ("pool", "slowstart", "soon", "must be a number of seconds, 0 (off) or more"),
    ("pool", "maxconn", "-5", "must be a whole number, 0 or more"),
    ("pool", "source", "10.0.0.1, 10.0.0.1", "must not list an address twice"),
    ("pool", "source", "10.0.0.1, lb", "lists lb, which must be a static IPv4"),
    ("pool", "rebalance", "often", "must be yes or no"),
    ("pool", "rebalance_rate", "0", "must be a number of connections a second"),
    ("pool", "rebalance_tolerance", "120", "must be a percentage from 0 to 100"),
    ("pool", "colour", "blue", "unknown key; allowed: name, fqdn, vip, kind, nat"),
    ("server:fe1", "address", "fe01.contoso.com", "not a host name"),
    ("server:fe1", "weight", "65536", "must be a whole number from 0 to 65535"),
    ("server:fe1", "weight", "heavy", "must be a whole number from 0 to 65535"),
    ("server:fe1", "slowstart", "inf", "must be a number of seconds, 0 (off)"),
    ("server:fe1", "maxconn", "lots", "must be a whole number, 0 or more"),
    ("server:fe1", "port", "5060", "unknown key; allowed: address, weight"),
    ("server:fe1", "tls_name", "fe 01", "must be the DNS name (such as fe01"),
    ("server:fe1", "tls_name", "-fe.contoso.com", "must be the DNS name"),
    ("limits", "per_source_connections", "-1", "must be a whole number, 0 or more"),
    ("limits", "per_source_rate", "1.5", "must be a whole number, 0 or more"),
    ("admin", "state_file", "", "must be a file name"),
    ("log", "connections", "maybe", "must be yes or no"),
    ("log", "format", "json", "unknown key; allowed: connections"),
    ("limits", "burst", "5", "unknown key; allowed: per_source_connections"),
    ("tls", "mode", "offload", "must be one of passthrough, terminate"),
    ("tls", "handshake_timeout", "0", "greater than 0 and at most 300"),
    ("tls", "handshake_timeout", "301", "greater than 0 and at most 300"),
    ("tls", "certificate", "/etc/pool.pem", "is only used by mode = terminate"),
    ("tls", "trust", "/etc/ca.pem", "is only used by mode = terminate"),
    ("tls", "client_certificate", "/etc/lb.pem", "is only used by mode = terminate"),
    ("tls", "inspect", "no", "is only used by mode = terminate"),
    ("tls", "inspect", "sometimes", "must be yes or no"),
    ("tls", "key", "pool.key", "unknown key; allowed: mode, certificate, trust"),
    ("ports", "5060", "udp", "must be one of tcp, sip, sips"),
    ("ports", "0", "tcp", "the port must be a whole number from 1 to 65535"),
    ("ports", "sip", "tcp", "the port must be a whole number from 1 to 65535"),
    ("admin", "listen", "ssl:9900", "must be a Twisted endpoint string: tcp:PORT"),
    ("admin", "listen", "tcp:port", "must be a Twisted endpoint string: tcp:PORT"),
    ("admin", "listen", "9900", "must be a Twisted endpoint string: tcp:PORT"),
    ("admin", "listen", "tcp:99999", "must be a Twisted endpoint string: tcp:PORT"),
    ("admin", "listen", "tcp6:port=65536", "must be a Twisted endpoint string"),
    ("admin", "token_file", "token.txt", "must be an absolute path to a file"),
    ("admin", "token", "s3cret", "unknown key; allowed: listen, token_file, hosts"),
    ("admin", "hosts", "lb1.contoso.com, *.evil", "must be DNS names such as"),
    ("admin", "hosts", "-x.contoso.com", "must be DNS names such as"),
    ("monitor", "type", "icmp", "must be one of tcp"),
    ("monitor", "ports", "5061, 5061", "must be distinct ports from 1 to 65535"),
    ("monitor", "ports", "5061; 444", "must be distinct ports from 1 to 65535"),
    ("monitor", "ports", "0", "must be distinct ports from 1 to 65535"),
    ("monitor", "interval", "0.5", "must be a number of seconds, 1 or more"),
    ("monitor", "timeout", "0", "must be a number of seconds greater than 0"),
    ("monitor", "timeout", "6", "must not exceed the interval (5 s)"),
    ("monitor", "rise", "0", "must be a whole number from 1 to 1000"),
    ("monitor", "fall", "-2", "must be a whole number from 1 to 1000"),
    ("monitor", "url", "health", "must be a path starting with /, without spaces"),
    ("monitor", "url", "/a b", "must be a path starting with /, without spaces"),
    ("monitor", "url", "/health", "is only used by type = https"),
    ("monitor", "path", "/", "unknown key; allowed: type, ports, interval"),
]


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_VALUES)
def test_each_bad_value_is_named_with_what_is_allowed(
    section: str, key: str, value: str, message: str
) -> None:
    text = with_key(section, key, value)
    [line] = problems(text)
    assert line.startswith(f"t.ini: [{section}] {key} = {value}: ")
    assert message in line


class TestProblems:
    def test_every_problem_is_reported_at_once(self) -> None:
        text = (
            "[pool]\nname = p\nfqdn = p.example.com\nvip = 127.0.21.10\nnat = dsr\n"
            "retries = -1\n\n[ports]\n15060 = sip\n\n[server:fe1]\naddress = nowhere\n"
            "[extra]\n"
        )
        assert problems(text) == [
            "t.ini: [pool] nat = dsr: Direct Server Return is not supported by OCS "
            "2007 R2 pools: the load balancer must see the servers' replies; use "
            "full or half",
            "t.ini: [pool] retries = -1: must be a whole number, 0 or more",
            "t.ini: [server:fe1] address = nowhere: must be a static IPv4 or IPv6 "
            "address, not a host name",
            "t.ini: [extra]: unknown section; allowed: [pool], [ports], [server:NAME], "
            "[monitor], [tls], [admin], [limits], [log]",
        ]

    def test_a_source_address_is_only_for_full_nat(self) -> None:
        text = MINIMAL.replace(
            "[pool]", "[pool]\nkind = edge\nnat = half\nsource = 10.0.0.5"
        )
        assert problems(text) == [
            "t.ini: [pool] source = 10.0.0.5: is only used by nat = full: with "
            "half-NAT, server connections come from the client's own address"
        ]

    @pytest.mark.parametrize("kind", ["enterprise", "director", "web-access"])
    def test_half_nat_is_refused_for_internal_pools_with_the_reason(
        self, kind: str
    ) -> None:
        [line] = problems(
            MINIMAL.replace("[pool]\n", f"[pool]\nkind = {kind}\nnat = half\n")
        )
        assert line.startswith("t.ini: [pool] nat = half: ")
        assert f"refused for {kind} pools" in line
        assert "connect to their own VIP" in line

    def test_relations_are_checked_even_when_other_values_are_bad(self) -> None:
        text = MINIMAL.replace("[pool]\n", "[pool]\nnat = half\nretries = x\n")
        assert [line.split(":")[1] for line in problems(text)] == [
            " [pool] retries = x",
            " [pool] nat = half",
        ]

    def test_a_server_with_a_bad_value_still_counts_for_the_relations(self) -> None:
        text = MINIMAL + "[server:fe2]\naddress = 10.0.0.11\nweight = heavy\n"
        assert problems(text) == [
            "t.ini: [server:fe2] weight = heavy: must be a whole number from 0 to "
            "65535",
            "t.ini: [server:fe2] address = 10.0.0.11: is already server fe1's "
            "address; each server needs its own",
        ]

    def test_the_monitors_relations_beside_a_refused_value(self) -> None:
        text = MINIMAL + "[monitor]\ninterval = 1\ntimeout = 5\nrise = 0\n"
        assert problems(text) == [
            "t.ini: [monitor] rise = 0: must be a whole number from 1 to 1000",
            "t.ini: [monitor] timeout = 5: must not exceed the interval (1 s): a "
            "check ends before the next begins",
        ]

    @pytest.mark.parametrize(
        "monitor",
        [
            "interval = 0.5\ntimeout = 2\n",  # not the default 5 s either
            "timeout = 0\ninterval = 1\n",  # nor the default 2 s
            "type = htps\nurl = /health\n",  # https was meant
        ],
    )
    def test_a_refused_value_is_never_judged_by_a_relation(self, monitor: str) -> None:
        assert len(problems(MINIMAL + "[monitor]\n" + monitor)) == 1

    def test_the_tls_relations_beside_a_refused_value(self) -> None:
        text = MINIMAL + "[tls]\ncertificate = pool.pem\nhandshake_timeout = 0\n"
        assert [line.split(":")[1] for line in problems(text)] == [
            " [tls] handshake_timeout = 0",
            f" [tls] certificate = {Path.cwd() / 'pool.pem'}",
        ]
        refused_mode = MINIMAL + "[tls]\nmode = terminat\ncertificate = pool.pem\n"
        assert len(problems(refused_mode)) == 1

    def test_the_tls_files_are_checked_with_the_rest(self) -> None:
        """Given a file check, its problems are listed with the others."""
        asked = []

        def check(tls: TLSSettings, fqdn: str | None) -> list[tuple[str, str, str]]:
            asked.append((tls.certificate, fqdn))
            return [("certificate", str(tls.certificate), "cannot read: gone")]

        tls = "[tls]\nmode = terminate\ncertificate = /p.pem\n"
        text = MINIMAL.replace("vip = 10.0.0.10", "vip = x") + tls
        with pytest.raises(ConfigError) as raised:
            parse(text, "t.ini", check_files=check)
        assert [str(p) for p in raised.value.problems] == [
            "t.ini: [pool] vip = x: must be a static IPv4 or IPv6 address, not a "
            "host name",
            "t.ini: [tls] certificate = /p.pem: cannot read: gone",
        ]
        assert asked == [("/p.pem", "p.example.com")]
        assert parse(MINIMAL, check_files=check) == parse(MINIMAL)  # passthrough
        assert len(asked) == 1

    def test_required_keys(self) -> None:
        assert problems("[pool]\n[server:fe1]\nweight = 1\n") == [
            "t.ini: [pool] name = : is required",
            "t.ini: [pool] fqdn = : is required",
            "t.ini: [pool] vip = : is required",
            "t.ini: [server:fe1] address = : is required",
        ]

    def test_required_sections(self) -> None:
        assert problems("") == [
            "t.ini: [pool]: the [pool] section is required",
            "t.ini: [pool]: a pool needs at least one [server:NAME]",
        ]

    def test_an_empty_ports_section(self) -> None:
        assert problems(MINIMAL + "[ports]\n") == [
            "t.ini: [ports]: the VIP needs at least one port"
        ]

    def test_a_bad_server_name(self) -> None:
        [line] = problems(MINIMAL + "[server:fe 2]\naddress = 10.0.0.12\n")
        assert line.startswith("t.ini: [server:fe 2]: the server's name must be")

    def test_two_servers_on_one_address(self) -> None:
        assert problems(MINIMAL + "[server:fe2]\naddress = 10.0.0.011\n") != []
        assert problems(MINIMAL + "[server:fe2]\naddress = 10.0.0.11\n") == [
            "t.ini: [server:fe2] address = 10.0.0.11: is already server fe1's "
            "address; each server needs its own"
        ]

    def test_a_server_on_the_vip(self) -> None:
        assert problems(MINIMAL + "[server:fe2]\naddress = 10.0.0.10\n") == [
            "t.ini: [server:fe2] address = 10.0.0.10: is the VIP; a server needs "
            "its own address"
        ]

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (MINIMAL + "[pool]\n", "t.ini: line 9: section [pool] appears twice"),
            (
                MINIMAL + "address = 10.0.0.12\n",
                "t.ini: line 9: [server:fe1] address appears twice",
            ),
            ("name = p\n", "t.ini: line 1: a key before any [section]"),
            (MINIMAL + "oops\n", "t.ini: line 9: not a 'key = value' line"),
        ],
    )
    def test_syntax_errors_give_the_line(self, text: str, message: str) -> None:
        [line] = problems(text)
        assert line.startswith(message)

    def test_an_unreadable_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as raised:
            load(tmp_path / "missing.ini")
        assert (
            str(raised.value)
            == f"{tmp_path}/missing.ini: cannot read: No such file or directory"
        )

    def test_a_problem_reads_as_one_line(self) -> None:
        assert (
            str(Problem("f.ini", "pool", "vip", "x", "bad"))
            == "f.ini: [pool] vip = x: bad"
        )
        assert str(Problem("f.ini", "pool", None, None, "bad")) == "f.ini: [pool]: bad"
        assert str(Problem("f.ini", None, None, None, "bad")) == "f.ini: bad"


class TestInCode:
    """Embedders build the same classes, held to the same rules."""

    def test_strings_are_accepted_for_enums(self) -> None:
        pool = Pool(
            "p",
            "p.example.com",
            "10.0.0.10",
            [Server("a", "10.0.0.11")],
            kind="edge",
            nat="half",
        )  # type: ignore[arg-type]
        assert (pool.kind, pool.nat) == (PoolKind.EDGE, NatMode.HALF)
        assert Port(5060, "sip") == Port(5060, PortProtocol.SIP)  # type: ignore[arg-type]

    def test_lists_become_tuples(self) -> None:
        pool = Pool("p", "p.example.com", "10.0.0.10", [Server("a", "10.0.0.11")])
        assert pool.servers == (Server("a", "10.0.0.11"),)

    @pytest.mark.parametrize(
        ("build", "message"),
        [
            (lambda: Server("a", "x"), "address = 'x': must be a static IPv4"),
            (
                lambda: Server("a", "10.0.0.1", weight=-1),
                "weight = -1: must be a whole",
            ),
            (lambda: Server("a", "10.0.0.1", weight=True), "weight = True"),
            (lambda: Port(70000), "number = 70000: must be a whole number from 1"),
            (
                lambda: Pool(
                    "p",
                    "p.example.com",
                    "10.0.0.10",
                    [Server("a", "10.0.0.11")],
                    retries=-1,
                ),
                "retries = -1",
            ),
            (
                lambda: Pool(
                    "p",
                    "p.example.com",
                    "10.0.0.10",
                    [Server("a", "10.0.0.11")],
                    scheduler="x",
                ),
                "scheduler = 'x': unknown scheduler",
            ),
            (lambda: Pool("p", "p.example.com", "10.0.0.10", []), "servers"),
            (
                lambda: Pool(
                    "p",
                    "p.example.com",
                    "10.0.0.10",
                    [Server("a", "10.0.0.11")],
                    ports=[],
                ),
                "ports",
            ),
        ],
    )
    def test_bad_values_raise_naming_the_attribute(
        self, build: Callable[[], object], message: str
    ) -> None:
        with pytest.raises(ValueError, match=re.escape(message)):
            build()

    def test_relations_raise_config_error(self) -> None:
        with pytest.raises(ConfigError) as raised:
            Pool("p", "p.example.com", "10.0.0.10", [Server("a", "10.0.0.10")])
        assert str(raised.value) == (
            "[server:a] address = 10.0.0.10: is the VIP; a server needs its own address"
        )

    def test_the_classes_are_frozen(self) -> None:
        pool = parse(MINIMAL)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            pool.vip = "10.0.0.99"  # type: ignore[misc]


addresses = (st.ip_addresses(v=4) | st.ip_addresses(v=6)).filter(
    lambda a: not (a.is_multicast or a.is_unspecified)
)
names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)


@st.composite
def monitors(draw: st.DrawFn) -> Monitor:
    interval = draw(st.floats(1, 3600))
    kind = draw(st.sampled_from(MonitorType))
    url = "/"
    if kind is MonitorType.HTTPS:
        url = draw(st.from_regex(r"/[a-z0-9/?=&.-]{0,30}", fullmatch=True))
    return Monitor(
        type=kind,
        url=url,
        ports=draw(st.lists(st.integers(1, 65535), max_size=3, unique=True)),
        interval=interval,
        timeout=draw(st.floats(0.001, interval)),
        rise=draw(st.integers(1, 1000)),
        fall=draw(st.integers(1, 1000)),
    )


files = st.from_regex(r"/[a-z0-9/._-]{1,30}", fullmatch=True)
tls_settings = st.builds(TLSSettings) | st.builds(
    TLSSettings,
    mode=st.just(TLSMode.TERMINATE),
    certificate=files,
    trust=st.none() | files,
    client_certificate=st.none() | files,
    handshake_timeout=st.floats(0.001, 300),
    inspect=st.booleans(),
)
tls_names = (
    st.none()
    | addresses.map(str)
    | st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
)

admins = st.none() | st.builds(
    Admin,
    listen=st.integers(0, 65535).map(lambda n: f"tcp:{n}:interface=127.0.0.1")
    | st.from_regex(r"unix:/[a-z0-9/._-]{1,30}", fullmatch=True),
    token_file=st.none() | st.from_regex(r"/[a-z0-9/._-]{1,30}", fullmatch=True),
    hosts=st.lists(
        st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
        max_size=3,
    ).map(tuple),
)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    chosen = draw(st.lists(addresses.map(str), min_size=2, max_size=6, unique=True))
    server_names = draw(
        st.lists(names, min_size=len(chosen) - 1, max_size=len(chosen) - 1, unique=True)
    )
    kind = draw(st.sampled_from(PoolKind))
    half = kind is PoolKind.EDGE and draw(st.booleans())
    return Pool(
        name=draw(names),
        fqdn=draw(
            st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True)
        ),
        vip=chosen[0],
        servers=[
            Server(
                n,
                a,
                weight=draw(st.integers(0, 65535)),
                tls_name=draw(tls_names),
                slowstart=draw(st.none() | st.floats(0, 1e5)),
                maxconn=draw(st.integers(0, 10**6)),
            )
            for n, a in zip(server_names, chosen[1:], strict=True)
        ],
        ports=[
            Port(n, draw(st.sampled_from(PortProtocol)))
            for n in draw(
                st.lists(st.integers(1, 65535), min_size=1, max_size=5, unique=True)
            )
        ],
        kind=kind,
        nat=NatMode.HALF if half else NatMode.FULL,
        scheduler=draw(st.sampled_from(sorted(SCHEDULERS))),
        monitor=draw(monitors()),
        tls=draw(tls_settings),
        admin=draw(admins),
        idle_timeout=draw(st.floats(0.001, 1e7)),
        connect_timeout=draw(st.floats(0.001, 600)),
        retries=draw(st.integers(0, 10)),
        registration_grace=draw(st.floats(0.001, 1e6)),
        reap_expired=draw(st.booleans()),
        source=()
        if half
        else draw(st.lists(addresses.map(str), max_size=3, unique=True).map(tuple)),
        freebind=draw(st.booleans()),
        slowstart=draw(st.floats(0, 1e5)),
        maxconn=draw(st.integers(0, 10**6)),
        limits=Limits(draw(st.integers(0, 10**4)), draw(st.integers(0, 10**4))),
        rebalance=draw(st.booleans()),
        rebalance_rate=draw(st.floats(0.001, 1e4)),
        rebalance_tolerance=draw(st.floats(0, 100)),
        log=LogSettings(draw(st.booleans())),
    )


@given(pools())
def test_render_writes_what_parse_reads_back(pool: Pool) -> None:
    assert parse(render(pool)) == pool


def test_the_state_file_is_beside_the_pools_file(tmp_path: Path) -> None:
    path = tmp_path / "fe.ini"
    text = "[pool]\nname = p\nfqdn = p.example.com\nvip = 10.0.0.10\n"
    text += "[server:fe1]\naddress = 10.0.0.11\n"
    path.write_text(text)
    assert load(path).admin is None
    path.write_text(text + "[admin]\n")
    assert load(path).admin.state_file == str(tmp_path / "fe.state")
    path.write_text(text + "[admin]\nstate_file = run/fe.json\n")
    assert load(path).admin.state_file == str(tmp_path / "run" / "fe.json")
