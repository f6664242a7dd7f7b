"""Each client address to one worker: a classic BPF program for ``SO_REUSEPORT``.

The kernel spreads the connections of a port's ``SO_REUSEPORT`` sockets
over them by a hash of each connection's addresses and ports, so one
client's connections land on every worker.  Where the pool limits what one
client address may take (``[limits]``), each worker counts only its own
share, and a source could hold ``workers`` times its limit.  With
:func:`steer_by_source` attached, the kernel picks the socket from the
client's address alone (an IPv4 address, or the /64 of an IPv6 one, as
:mod:`ocsbal._limits` counts them), so a source's connections all reach one
worker and its limits hold host-wide.  The price: the spread over the
workers follows the number of client addresses, and many clients behind
one address share one worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import socket
import struct

__all__ = ["steer_by_source", "steer_evenly"]

#: ``SO_ATTACH_REUSEPORT_CBPF`` and ``SO_DETACH_REUSEPORT_BPF`` (Linux 4.5, 5.3).
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_DETACH_REUSEPORT_BPF = getattr(socket, "SO_DETACH_REUSEPORT_BPF", 68)

# Classic BPF: loads from the network header's offset, and the few codes used.
_NET = -0x100000  # SKF_NET_OFF
_LD_W_ABS = 0x00 | 0x00 | 0x20
_TAX = 0x07 | 0x00
_XOR_X = 0x04 | 0xA0 | 0x08
_MOD_K = 0x04 | 0x90 | 0x00
_RET_A = 0x06 | 0x10


def _instruction(code: int, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, 0, 0, k & 0xFFFFFFFF)


def _program(count: int, ipv6: bool) -> bytes:
    """The socket's index: the source address (its /64 for IPv6) mod ``count``."""
    if ipv6:  # the source address starts at byte 8; its /64 is words 8 and 12
        load = [
            _instruction(_LD_W_ABS, _NET + 8),
            _instruction(_TAX),
            _instruction(_LD_W_ABS, _NET + 12),
            _instruction(_XOR_X),
        ]
    else:  # the IPv4 source address is the word at byte 12
        load = [_instruction(_LD_W_ABS, _NET + 12)]
    return b"".join([*load, _instruction(_MOD_K, count), _instruction(_RET_A)])


def steer_by_source(group: list[socket.socket], ipv6: bool) -> None:
    """Send each client address's connections to one socket of ``group``.

    ``group`` is one port's ``SO_REUSEPORT`` sockets in the order they were
    bound, which is the order the kernel indexes them in.

    :raises OSError: if the kernel refuses the program.
    """
    code = _program(len(group), ipv6)
    instructions = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(instructions))
    group[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def steer_evenly(group: list[socket.socket]) -> None:
    """Let the kernel spread ``group``'s connections by its own hash again."""
    # None attached, or a kernel before 5.3: nothing to undo.
    with contextlib.suppress(OSError):
        group[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
