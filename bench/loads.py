"""The loads the benchmark puts through each path, and how each figure is read.

Each function runs one measurement against one address and returns its
figure; none leaves a process or a socket behind, and each bounds its wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from setups import BULK_PATH, CLIENT, HTTP_REQUEST, SMALL_BODY, Address
from supervise import BenchError, rss_kib

#: wrk's own summary, as one JSON line (its text report is for people).
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""
SCENARIO = Path(__file__).with_name("sipp") / "register.xml"


@dataclass(frozen=True)
class Rate:
    """What a rate test counted: answers per second, and failures."""

    rate: float
    errors: int


def _run(args: list[str], timeout: float, cwd: Path | None = None) -> str:
    """Run a load generator to its end; its standard output."""
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{args[0]} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(args)} exited with {done.returncode}:\n"
            f"{done.stdout.decode(errors='replace')[-1500:]}"
            f"{done.stderr.decode(errors='replace')[-1500:]}"
        )
    return done.stdout.decode(errors="replace")


def _json_line(output: str) -> dict[str, float]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            parsed: dict[str, float] = json.loads(line)
            return parsed
    raise BenchError(f"no summary in:\n{output[-1500:]}")


def wrk(
    work: Path,
    address: Address,
    seconds: float,
    *,
    close: bool = False,
    tls: bool = False,
    connections: int = 50,
) -> Rate:
    """Requests a second by wrk (one thread) over ``connections`` connections.

    With ``close``, every request says ``Connection: close``, so each one is
    a new connection (and over TLS a new, full handshake): requests a
    second are then connections, or handshakes, a second.
    """
    script = work / "wrk-report.lua"
    if not script.exists():
        script.write_text(WRK_REPORT)
    scheme = "https" if tls else "http"
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s"]
    args += ["-s", str(script), f"{scheme}://{address[0]}:{address[1]}/"]
    if close:
        args += ["-H", "Connection: close"]
    summary = _json_line(_run(args, seconds + 30))
    errors = sum(int(summary[k]) for k in ("connect", "read", "write", "status"))
    errors += int(summary["timeout"])
    return Rate(summary["requests"] / (summary["duration_us"] / 1e6), errors)


def loadgen(
    program: Path,
    address: Address,
    request: Path,
    seconds: float,
    *,
    rate: float = 0.0,
    warmup: float = 0.0,
    connections: int = 50,
) -> dict[str, float]:
    """Run bench/loadgen.c's client; its summary (see that file)."""
    args = [str(program), "client", address[0], str(address[1]), str(request)]
    args += [str(connections), f"{seconds:g}", f"{rate:.1f}", f"{warmup:g}"]
    return _json_line(_run(args, warmup + seconds + 30))


def bulk(address: Address, size: int, *, tls: bool = False) -> float:
    """MB/s (10**6 bytes) of one HTTP download of ``size`` bytes through ``address``.

    The clock runs from the request to the last byte; a TLS handshake, if
    any, is done before it starts.  The client reads into one buffer and
    keeps nothing, so it is not what limits the figure.
    """
    sock = socket.create_connection(address, timeout=30)
    try:
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # as wrk: speed, not identity
            sock = context.wrap_socket(sock)
        request = (
            f"GET {BULK_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )
        buffer = memoryview(bytearray(1 << 20))
        received = 0
        started = time.perf_counter()
        sock.sendall(request.encode())
        while n := sock.recv_into(buffer):
            received += n
        elapsed = time.perf_counter() - started
    finally:
        sock.close()
    if received < size:
        raise BenchError(f"bulk through {address}: {received} of {size} bytes")
    return size / elapsed / 1e6


def idle_memory(pid: int, address: Address, count: int, *, tls: bool = False) -> float:
    """KiB of the balancer ``pid``'s RSS per idle connection relayed to the server.

    A fresh balancer first relays a few connections (so that what every
    connection shares is loaded), then its RSS is read; ``count``
    connections are opened through it, each asks the server for its small
    page and gets it (the relay is established end to end, both sides'
    buffers have been used), and are then left idle.  Once the RSS stops
    growing, and the balancer is seen holding two descriptors a
    connection, the difference, divided by ``count``, is the figure.  With
    ``tls`` the connections speak TLS to the balancer, which terminates it.
    """
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # memory, not identity
    return asyncio.run(_idle_memory(pid, address, count, context))


async def _idle_memory(
    pid: int, address: Address, count: int, context: ssl.SSLContext | None
) -> float:
    for writer in await _open_idle(address, 50, context):
        writer.close()
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    writers = await _open_idle(address, count, context)
    try:
        after = await _settled_rss(pid)
        # A balancer that does not hold both ends of every connection is
        # not what is being measured.
        held = len(os.listdir(f"/proc/{pid}/fd"))
        if held < 2 * count:
            raise BenchError(
                f"the balancer holds {held} descriptors for {count} connections"
            )
    finally:
        for writer in writers:
            writer.close()
    return (after - before) / count


async def _open_idle(
    address: Address, count: int, context: ssl.SSLContext | None
) -> list[asyncio.StreamWriter]:
    """``count`` connections through ``address``, each with one exchange done."""
    gate = asyncio.Semaphore(100)
    answer = SMALL_BODY.encode()

    async def one() -> asyncio.StreamWriter:
        async with gate:
            reader, writer = await asyncio.open_connection(*address, ssl=context)
            writer.write(HTTP_REQUEST)
            await reader.readuntil(answer)
            return writer

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    try:
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    except BaseException:
        for task in tasks:
            task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
        raise


async def _settled_rss(pid: int, timeout: float = 10.0) -> int:
    """The RSS once two readings half a second apart agree within 0.5 %."""
    deadline = time.monotonic() + timeout
    last = rss_kib(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) <= 0.005 * last:
            return now
        last = now
    return last


@dataclass(frozen=True)
class Calls:
    """What SIPp counted: successful calls a second, and failed calls."""

    rate: float
    failed: int


def sipp(work: Path, address: Address, calls: int, source: str) -> Calls:
    """``calls`` REGISTERs by SIPp, each on a TCP connection of its own (``-t tn``).

    At most 50 calls at a time, started as fast as they end.  SIPp binds
    each connection to ``source``; the caller gives each run an address of
    its own, because ``bind`` slows down as the connections closed by the
    runs before pile up in TIME_WAIT on the same address.
    """
    stats = work / "sipp-stats.csv"
    stats.unlink(missing_ok=True)
    args = ["sipp", f"{address[0]}:{address[1]}", "-sf", str(SCENARIO), "-nostdin"]
    args += ["-t", "tn", "-max_socket", "1000", "-i", source]
    args += ["-m", str(calls), "-r", "100000", "-l", "50"]
    args += ["-recv_timeout", "5000", "-timeout", "120s", "-timeout_error"]
    args += ["-trace_stat", "-stf", str(stats)]
    try:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=150,
            cwd=work,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("sipp did not finish in 150 s") from None
    # SIPp exits with 1 when some calls failed: counted, not fatal.
    if done.returncode not in (0, 1) or not stats.exists():
        raise BenchError(
            f"sipp exited with {done.returncode}:\n{done.stdout.decode()[-1500:]}"
        )
    header, *_, last = stats.read_text().splitlines()
    final = dict(zip(header.split(";"), last.split(";"), strict=False))

    def epoch(field: str) -> float:
        return float(final[field].split()[-1])  # "date time epoch"

    elapsed = epoch("CurrentTime") - epoch("StartTime")
    succeeded = int(final["SuccessfulCall(C)"])
    return Calls(succeeded / elapsed, calls - succeeded)  # failed or never ended


def sipp_source(run: int) -> str:
    """SIPp's address for its ``run``-th run: 127.0.60.100 to .199 in turn."""
    return f"{CLIENT.rsplit('.', 1)[0]}.{100 + run % 100}"
