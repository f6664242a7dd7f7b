"""What the benchmark runs: addresses, configuration files and commands.

Everything listens in 127.0.60.0/24 (other tests use other /24s of
loopback).  The balancers listen on the VIP 127.0.60.10, each on ports of
its own, and every one of them relays to the same servers on 127.0.60.11:

=========================  ===========  ==========  ===========  ===========
server on 127.0.60.11      direct port  ocsbal      HAProxy      portforward
=========================  ===========  ==========  ===========  ===========
nginx, HTTP                8080         8080 tcp    18080        28080
nginx, HTTPS (TLS)         8443         8443 sips   18443 (ssl)
Kamailio registrar (SIP)   5060         5060 sip    15060        25060
SIP responder, REGISTERs   5070, 5071   5070 sip    15070        25070
                                        5071 tcp
SIP responder, OCS mix     5072, 5073   5072 sip    15072        25072
                                        5073 tcp
the same over TLS          5080-5083    5080, 5082  15080,
                                        sips        15082 (ssl)
nginx, idle connections    9080         9080 tcp    19080        29080
=========================  ===========  ==========  ===========  ===========

ocsbal relays each VIP port to the same port on the server, so each SIP
responder listens on two ports: one behind ocsbal's ``sip`` port and one
behind its ``tcp`` port, with the same bytes both ways.  For SIP over TLS a
second ocsbal, with ``[tls] inspect = no``, listens on 5081 and 5083 (the
relay the inspecting 5080 and 5082 are held to), and two HAProxy processes
that are not measured wrap the plain load generator and responder in TLS:
one listens on 127.0.60.1 and opens TLS to each path's address, the other
ends TLS on 127.0.60.11:5080-5083 in front of the responders.  The idle
connection test starts a fresh balancer of each kind on its own port for
each measurement.  ocsbal's admin interface listens on 127.0.60.1, and
SIPp binds 127.0.60.100 onwards, an address a run (see loads.sipp).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trustme
from conversations import Turn, files, ocs_mix, register_only
from supervise import BenchError, Service, Supervisor

VIP = "127.0.60.10"
BACKEND = "127.0.60.11"
CLIENT = "127.0.60.1"
ADMIN = (CLIENT, 19960)
FQDN = "bench.ocsbal.test"  # the pool's name, in its certificate
BACKEND_NAME = "backend.ocsbal.test"  # the server's certificate name
BIN = Path(sys.executable).parent
HERE = Path(__file__).parent

Address = tuple[str, int]

#: Where each path listens, for each kind of traffic.
HTTP: dict[str, Address] = {
    "direct": (BACKEND, 8080),
    "haproxy": (VIP, 18080),
    "portforward": (VIP, 28080),
    "ocsbal": (VIP, 8080),
}
HTTPS: dict[str, Address] = {
    "direct": (BACKEND, 8443),
    "haproxy": (VIP, 18443),
    "ocsbal": (VIP, 8443),
}
REGISTRAR: dict[str, Address] = {
    "direct": (BACKEND, 5060),
    "haproxy": (VIP, 15060),
    "portforward": (VIP, 25060),
    "ocsbal": (VIP, 5060),
}
#: The SIP the SIP tests carry (bench/conversations.py).
CONVERSATIONS: dict[str, list[Turn]] = {
    "register": register_only(),
    "mix": ocs_mix(),
}
#: Where the SIP responder of each conversation listens: behind ocsbal's
#: ``sip`` port, behind its ``tcp`` port, and the TLS ports in front of them.
RESPONDER_PORTS = {"register": (5070, 5071), "mix": (5072, 5073)}
TLS_PORTS = {"register": (5080, 5081), "mix": (5082, 5083)}
#: ``ocsbal`` is a port that follows SIP; ``ocsbal-relay`` one that does not.
SIP: dict[str, dict[str, Address]] = {
    name: {
        "direct": (BACKEND, sip),
        "haproxy": (VIP, 10000 + sip),
        "portforward": (VIP, 20000 + sip),
        "ocsbal": (VIP, sip),
        "ocsbal-relay": (VIP, tcp),
    }
    for name, (sip, tcp) in RESPONDER_PORTS.items()
}
#: Where each path's TLS goes: ``ocsbal-relay`` is the ocsbal with
#: ``[tls] inspect = no``.
SIPS_TARGETS: dict[str, dict[str, Address]] = {
    name: {
        "direct": (BACKEND, inspected),
        "haproxy": (VIP, 10000 + inspected),
        "ocsbal": (VIP, inspected),
        "ocsbal-relay": (VIP, relayed),
    }
    for name, (inspected, relayed) in TLS_PORTS.items()
}
#: Where the load generator connects for each path's TLS: the wrapper, on
#: a port of its own for each path (35080, 36080, ... for the REGISTERs).
_WRAPPED = {"direct": 35000, "haproxy": 36000, "ocsbal": 37000, "ocsbal-relay": 38000}
SIPS: dict[str, dict[str, Address]] = {
    name: {path: (CLIENT, base + ports[0] % 1000) for path, base in _WRAPPED.items()}
    for name, ports in TLS_PORTS.items()
}
IDLE: dict[str, Address] = {
    "haproxy": (VIP, 19080),
    "portforward": (VIP, 29080),
    "ocsbal": (VIP, 9080),
}
IDLE_BACKEND: Address = (BACKEND, 9080)
#: The workers test: ocsbal with one worker, and with two, to nginx's HTTP
#: (on a VIP of their own: a VIP port relays to the same port of the
#: server); their admin interface, to see how the kernel shared the
#: connections.
WORKERS: dict[int, Address] = {1: ("127.0.60.21", 8080), 2: ("127.0.60.22", 8080)}
WORKERS_ADMIN: Address = (CLIENT, 19961)
#: The idle test over TLS, terminated by the balancer, to nginx's HTTPS.
IDLE_TLS: dict[str, Address] = {"haproxy": (VIP, 19443), "ocsbal": (VIP, 9443)}
IDLE_TLS_BACKEND: Address = (BACKEND, 9443)

BULK_PATH = "/bulk"
SMALL_BODY = "hello from the backend\n"
#: The request of the message-rate and latency tests; nginx answers SMALL_BODY.
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: bench.ocsbal.test\r\n\r\n"


class Work:
    """The benchmark's working directory: configuration, certificates, logs."""

    def __init__(self, directory: Path, bulk_megabytes: int) -> None:
        self.dir = directory
        self.bulk_bytes = bulk_megabytes * 10**6
        self.loadgen = directory / "loadgen"

    def prepare(self) -> None:
        """Write every file the services read, and build the load generator."""
        self._certificates()
        www = self.dir / "www"
        www.mkdir()
        block = (bytes(range(256)) * 3907)[: 10**6]
        with (www / BULK_PATH.lstrip("/")).open("wb") as bulk:
            for _ in range(self.bulk_bytes // len(block)):
                bulk.write(block)
        for name, turns in CONVERSATIONS.items():
            client, server = files(turns)
            (self.dir / f"{name}-client").write_bytes(client)
            (self.dir / f"{name}-server").write_bytes(server)
        (self.dir / "http-request").write_bytes(HTTP_REQUEST)
        (self.dir / "nginx-temp").mkdir()
        (self.dir / "kamailio-run").mkdir()
        self._write("nginx.conf", self._nginx())
        self._write("haproxy.cfg", self._haproxy())
        self._write("pool.ini", self._pool())
        self._write("pool-relay.ini", self._pool_relay())
        self._write("tls-client.cfg", self._tls_client())
        self._write("tls-server.cfg", self._tls_server())
        self._write("kamailio.cfg", KAMAILIO_CFG.format(address=BACKEND))
        self._write("haproxy-idle.cfg", self._haproxy_idle())
        self._write("pool-idle.ini", self._pool_idle())
        self._write("haproxy-idle-tls.cfg", self._haproxy_idle_tls())
        self._write("pool-idle-tls.ini", self._pool_idle_tls())
        for count in WORKERS:
            self._write(f"pool-workers-{count}.ini", self._pool_workers(count))
        self._build_loadgen()

    def _write(self, name: str, text: str) -> None:
        (self.dir / name).write_text(text)

    def _certificates(self) -> None:
        """RSA 2048, as OCS certificates are: one authority for the pool's
        certificate (the clients'), another for the server's (ocsbal's
        ``[tls] trust`` and HAProxy's ``ca-file``)."""
        rsa = trustme.KeyType.RSA
        clients_ca, servers_ca = trustme.CA(key_type=rsa), trustme.CA(key_type=rsa)
        pool = clients_ca.issue_cert(FQDN, key_type=rsa)
        pool.private_key_and_cert_chain_pem.write_to_path(str(self.dir / "pool.pem"))
        backend = servers_ca.issue_cert(BACKEND_NAME, key_type=rsa)
        backend.private_key_and_cert_chain_pem.write_to_path(
            str(self.dir / "backend.pem")
        )
        servers_ca.cert_pem.write_to_path(str(self.dir / "servers-ca.pem"))

    def _build_loadgen(self) -> None:
        source = HERE / "loadgen.c"
        command = ["cc", "-O2", "-Wall", "-o", str(self.loadgen), str(source)]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except FileNotFoundError:
            raise BenchError("no C compiler: apt-get install gcc libc6-dev") from None
        except subprocess.CalledProcessError as e:
            raise BenchError(f"cannot build {source}:\n{e.stderr.decode()}") from None

    def _nginx(self) -> str:
        temp = self.dir / "nginx-temp"
        listen = [
            f"listen {BACKEND}:{HTTP['direct'][1]} backlog=4096;",
            f"listen {BACKEND}:{IDLE_BACKEND[1]} backlog=4096;",
            f"listen {BACKEND}:{HTTPS['direct'][1]} ssl backlog=4096;",
            f"listen {BACKEND}:{IDLE_TLS_BACKEND[1]} ssl backlog=4096;",
        ]
        return f"""
daemon off;
master_process off;
pid {self.dir}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 20000;
events {{
    worker_connections 20000;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type application/octet-stream;
    ssl_certificate {self.dir}/backend.pem;
    ssl_certificate_key {self.dir}/backend.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
        {" ".join(listen)}
        root {self.dir}/www;
        location = / {{
            return 200 "{SMALL_BODY.strip()}\\n";
        }}
    }}
}}
"""

    def _ends_tls(self) -> str:
        """HAProxy's bind options to terminate the clients' TLS."""
        return f"ssl crt {self.dir}/pool.pem no-tls-tickets"

    def _server_tls(self) -> str:
        """HAProxy's server options for its own TLS to the server, verified."""
        return (
            f"ssl verify required ca-file {self.dir}/servers-ca.pem "
            f"verifyhost {BACKEND_NAME} sni str({BACKEND_NAME})"
        )

    def _haproxy(self) -> str:
        plain = {"http": HTTP, "registrar": REGISTRAR}
        plain.update({f"sip-{name}": table for name, table in SIP.items()})
        tls = {"tls": HTTPS}
        tls.update({f"sips-{name}": table for name, table in SIPS_TARGETS.items()})
        sections = [
            _listen(name, [table["haproxy"]], table["direct"])
            for name, table in plain.items()
        ] + [
            _listen(
                name,
                [table["haproxy"]],
                table["direct"],
                bind=self._ends_tls(),
                server=self._server_tls(),
            )
            for name, table in tls.items()
        ]
        return HAPROXY_GLOBAL + "".join(sections)

    def _tls_client(self) -> str:
        """The load generator's TLS: a port on 127.0.60.1 for each path."""
        return HAPROXY_GLOBAL + "".join(
            _listen(f"to-{path}-{name}", [SIPS[name][path]], target, server=WRAP)
            for name, by_path in SIPS_TARGETS.items()
            for path, target in by_path.items()
        )

    def _tls_server(self) -> str:
        """The responders' TLS, with the servers' certificate."""
        return HAPROXY_GLOBAL + "".join(
            _listen(
                f"responder-{name}",
                [(BACKEND, port) for port in TLS_PORTS[name]],
                (BACKEND, RESPONDER_PORTS[name][1]),
                bind=f"ssl crt {self.dir}/backend.pem",
            )
            for name in TLS_PORTS
        )

    def _haproxy_idle(self) -> str:
        return HAPROXY_GLOBAL + _listen("idle", [IDLE["haproxy"]], IDLE_BACKEND)

    def _haproxy_idle_tls(self) -> str:
        return HAPROXY_GLOBAL + _listen(
            "idle",
            [IDLE_TLS["haproxy"]],
            IDLE_TLS_BACKEND,
            bind=self._ends_tls(),
            server=self._server_tls(),
        )

    def _pool(self) -> str:
        ports = {
            HTTP["ocsbal"][1]: "tcp",
            HTTPS["ocsbal"][1]: "sips",
            REGISTRAR["ocsbal"][1]: "sip",
        }
        for name, table in SIP.items():
            ports[table["ocsbal"][1]] = "sip"
            ports[table["ocsbal-relay"][1]] = "tcp"
            ports[SIPS_TARGETS[name]["ocsbal"][1]] = "sips"
        return (
            _pool_ini(ports, HTTP["direct"][1])
            + TLS_TERMINATE
            + f"\n[admin]\nlisten = tcp:{ADMIN[1]}:interface={ADMIN[0]}\n"
        )

    def _pool_relay(self) -> str:
        """The second ocsbal: SIP over TLS relayed, not followed."""
        ports = {t["ocsbal-relay"][1]: "sips" for t in SIPS_TARGETS.values()}
        checked = SIPS_TARGETS["register"]["ocsbal-relay"][1]
        return _pool_ini(ports, checked) + TLS_TERMINATE + "inspect = no\n"

    def _pool_idle(self) -> str:
        return _pool_ini({IDLE["ocsbal"][1]: "tcp"}, IDLE_BACKEND[1])

    def _pool_workers(self, count: int) -> str:
        vip, port = WORKERS[count]
        ini = _pool_ini({port: "tcp"}, HTTP["direct"][1], workers=count, vip=vip)
        admin = WORKERS_ADMIN
        return ini + f"\n[admin]\nlisten = tcp:{admin[1]}:interface={admin[0]}\n"

    def _pool_idle_tls(self) -> str:
        port = IDLE_TLS["ocsbal"][1]
        return _pool_ini({port: "sips"}, IDLE_TLS_BACKEND[1]) + TLS_TERMINATE

    # ------------------------------------------------------------ commands

    def start_servers(self, supervisor: Supervisor, registrar: bool) -> None:
        """nginx, the SIP responder and (if ``registrar``) Kamailio; all listening."""
        nginx = ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        supervisor.start(
            "nginx",
            nginx,
            [HTTP["direct"], HTTPS["direct"], IDLE_BACKEND, IDLE_TLS_BACKEND],
        )
        for name, ports in RESPONDER_PORTS.items():
            listed = ",".join(str(port) for port in ports)
            responder = [str(self.loadgen), "serve", BACKEND, listed]
            supervisor.start(
                f"sip-responder-{name}",
                [*responder, str(self.dir / f"{name}-server")],
                [(BACKEND, port) for port in ports],
            )
        if registrar:
            run = self.dir / "kamailio-run"
            kamailio = ["kamailio", "-DD", "-E", "-f", str(self.dir / "kamailio.cfg")]
            kamailio += ["-m", "256", "-M", "16", "-Y", str(run), "-P", f"{run}/pid"]
            supervisor.start("kamailio", kamailio, [REGISTRAR["direct"]])

    def start_balancers(self, supervisor: Supervisor, paths: list[str]) -> None:
        """The balancers of ``paths`` for every test but the idle one; listening."""
        if "haproxy" in paths:
            tables = (HTTP, HTTPS, REGISTRAR, *SIP.values(), *SIPS_TARGETS.values())
            supervisor.start(
                "haproxy",
                haproxy(self.dir / "haproxy.cfg"),
                [t["haproxy"] for t in tables],
            )
        if "portforward" in paths:
            for table in (HTTP, REGISTRAR, *SIP.values()):
                listen, target = table["portforward"], table["direct"]
                supervisor.start(
                    f"portforward-{listen[1]}",
                    portforward(listen, target),
                    [listen],
                )
        if "ocsbal" in paths:
            tables = (HTTP, HTTPS, REGISTRAR, *SIP.values(), *SIPS_TARGETS.values())
            listening = [t["ocsbal"] for t in tables]
            listening += [t["ocsbal-relay"] for t in SIP.values()]
            supervisor.start("ocsbal", ocsbal(self.dir / "pool.ini"), listening)

    def start_tls_sip(self, supervisor: Supervisor) -> None:
        """What the SIP over TLS tests need besides: the TLS wrappers of the
        responders and of the load generator, and the ocsbal that relays."""
        supervisor.start(
            "tls-server",
            haproxy(self.dir / "tls-server.cfg"),
            [(BACKEND, port) for ports in TLS_PORTS.values() for port in ports],
        )
        supervisor.start(
            RELAY,
            ocsbal(self.dir / "pool-relay.ini"),
            [t["ocsbal-relay"] for t in SIPS_TARGETS.values()],
        )
        supervisor.start(
            "tls-client",
            haproxy(self.dir / "tls-client.cfg"),
            [a for table in SIPS.values() for a in table.values()],
        )

    def start_workers_balancer(self, supervisor: Supervisor, count: int) -> Service:
        """A fresh ocsbal of ``count`` workers for the workers test."""
        return supervisor.start(
            f"ocsbal-workers-{count}",
            ocsbal(self.dir / f"pool-workers-{count}.ini"),
            [WORKERS[count]],
        )

    def start_idle_balancer(
        self, supervisor: Supervisor, path: str, tls: bool = False
    ) -> Service:
        """A fresh balancer of kind ``path`` for an idle-connection test."""
        address = (IDLE_TLS if tls else IDLE)[path]
        kind = "idle-tls" if tls else "idle"
        commands = {
            "haproxy": haproxy(self.dir / f"haproxy-{kind}.cfg"),
            "portforward": portforward(address, IDLE_BACKEND),
            "ocsbal": ocsbal(self.dir / f"pool-{kind}.ini"),
        }
        return supervisor.start(f"{path}-{kind}", commands[path], [address])


def balancer(path: str, address: Address, tls: bool) -> str | None:
    """The name of the service a SIP test's ``path`` measures, if any."""
    if path == "direct":
        return None
    if path == "portforward":
        return f"portforward-{address[1]}"
    if path == "ocsbal-relay":
        return RELAY if tls else "ocsbal"
    return path


def haproxy(config: Path) -> list[str]:
    return ["haproxy", "-db", "-f", str(config)]


def twistd() -> list[str]:
    return [str(BIN / "twistd"), "--nodaemon", "--pidfile="]


def ocsbal(config: Path) -> list[str]:
    return [*twistd(), "ocsbal", "--config", str(config)]


def portforward(listen: Address, target: Address) -> list[str]:
    return [
        *twistd(),
        *("portforward", "--port", f"tcp:{listen[1]}:interface={listen[0]}"),
        *("--host", target[0], "--dest_port", str(target[1])),
    ]


def _listen(
    name: str,
    binds: list[Address],
    target: Address,
    *,
    bind: str = "",
    server: str = "",
) -> str:
    """An HAProxy ``listen`` section relaying ``binds`` to ``target``."""
    lines = [f"listen {name}"]
    lines += [f"    bind {host}:{port} {bind}".rstrip() for host, port in binds]
    lines += ["    balance leastconn", f"    server s {target[0]}:{target[1]} {server}"]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _pool_ini(
    ports: dict[int, str], checked: int, workers: int = 1, vip: str = VIP
) -> str:
    """A pool of one server; one process (the figures per core) by default."""
    listed = "".join(f"{number} = {protocol}\n" for number, protocol in ports.items())
    return f"""[pool]
name = bench
fqdn = {FQDN}
vip = {vip}
idle_timeout = 1800
workers = {workers}

[ports]
{listed}
[server:backend]
address = {BACKEND}
tls_name = {BACKEND_NAME}

[monitor]
type = tcp
ports = {checked}
interval = 30
"""


#: The ocsbal that relays SIP over TLS without following it.
RELAY = "ocsbal-relay"
TLS_TERMINATE = (
    "\n[tls]\nmode = terminate\ncertificate = pool.pem\ntrust = servers-ca.pem\n"
)
#: The load generator's TLS wrapper is the client: it checks no certificate.
WRAP = "ssl verify none"

HAPROXY_GLOBAL = """
global
    nbthread 1
    maxconn 9000
    tune.ssl.cachesize 0
defaults
    mode tcp
    timeout connect 5s
    timeout client 30m
    timeout server 30m
"""

# A registrar and nothing else: locations in memory (db_mode 0), TCP only,
# no log line per request.  As tests/integration/kamailio.py's, which logs each.
KAMAILIO_CFG = """\
#!KAMAILIO
debug=1
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
listen=tcp:{address}:5060

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"

modparam("usrloc", "db_mode", 0)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (is_method("REGISTER")) {{
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""
