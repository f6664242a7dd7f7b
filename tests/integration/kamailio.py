"""Kamailio as a real SIP registrar behind a live balancer.

Debian's ``kamailio`` in the foreground, one per address, TCP only, with
locations in memory and no authentication.  Besides REGISTER it answers the
requests an Office Communicator sends its front end in the tests, as a
front end's own services would:

- OPTIONS, INVITE and BYE: 200 at once (stateless), so an INVITE, its 200
  and the ACK make an established call, which a BYE and its 200 end;
- ACK: absorbed;
- MESSAGE: 200 two or three seconds later (``async_sleep``, whose timer
  ticks each second), so a request can be kept waiting for its answer.

Each request is one log line (``itest: METHOD USER``), which the tests
count, and every reply names its registrar in its ``Server`` header.
"""

from __future__ import annotations

import os
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from harness import WAIT, Launcher, Process, require_tool, wait_listening

KAMAILIO = "/usr/sbin/kamailio"

CONFIG = """\
#!KAMAILIO
debug=2
log_stderror=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
listen=tcp:{address}:5060
server_header="Server: {name}"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "async.so"

modparam("usrloc", "db_mode", 0)
modparam("async", "workers", 1)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    xlog("L_NOTICE", "itest: $rm $fU\\n");
    if (is_method("REGISTER")) {{
        if (!save("location")) {{
            sl_reply_error();
        }}
        exit;
    }}
    if (is_method("OPTIONS|INVITE|BYE")) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (is_method("ACK")) {{
        exit;
    }}
    if (is_method("MESSAGE")) {{
        async_sleep("3");
        t_reply("200", "OK");
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


def start_registrar(launch: Launcher, name: str, address: str) -> Process:
    """Run Kamailio in the foreground on ``address``:5060, in a session of its own.

    ``setsid`` makes Kamailio's process id its process group's, so that
    :func:`stop_registrar` reaches its children too: they outlive a main
    process that is killed, and keep the port.  Returns once it listens.
    """
    require_tool(KAMAILIO, "kamailio")
    with socket.socket() as probe:  # else wait_listening would find that one
        taken = probe.connect_ex((address, 5060)) == 0
    assert not taken, f"something already listens on {address}:5060"
    config = launch.write(f"{name}.cfg", CONFIG.format(name=name, address=address))
    run = launch.tmp_path / f"{name}-run"
    run.mkdir()
    process = launch.spawn(
        name,
        [
            *("setsid", KAMAILIO, "-DD", "-E", "-f", str(config)),
            *("-m", "64", "-M", "8", "-Y", str(run), "-P", str(run / "pid")),
        ],
    )
    wait_listening(address, 5060, process)
    return process


def stop_registrar(process: Process) -> None:
    """SIGTERM, which Kamailio passes to its children; then kill what is left."""
    group = process.popen.pid
    with suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    try:
        process.popen.wait(timeout=WAIT)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


@contextmanager
def registrars(
    launch: Launcher, addresses: dict[str, str]
) -> Iterator[dict[str, Process]]:
    """Kamailio on each of ``addresses`` (name to address), listening.

    The dictionary yielded holds those running; one started later by
    :func:`start_registrar` and added to it is stopped with them.
    """
    started: dict[str, Process] = {}
    try:
        for name, address in addresses.items():
            started[name] = start_registrar(launch, name, address)
        yield started
    finally:
        for process in started.values():
            stop_registrar(process)


def requests(process: Process, method: str) -> Counter[str]:
    """The requests of ``method`` Kamailio logged, counted by user."""
    mark = f"itest: {method} "
    return Counter(
        line.partition(mark)[2] for line in process.output.splitlines() if mark in line
    )


def complaints(process: Process) -> list[str]:
    """The errors and warnings in Kamailio's log."""
    return [
        line
        for line in process.output.splitlines()
        if " ERROR: " in line or " WARNING: " in line
    ]
