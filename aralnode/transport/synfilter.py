"""New connections from some client addresses left waiting, at the kernel (Linux).

The reaper's sweep (``connections.shed``) shuts down what an address holds past its
share, but grpc core accepts every connection until the port is full: an address
that reconnects as soon as it is shut out took the places back within a
millisecond, and kept the port full between sweeps (a client from elsewhere got
in about one time in twenty). So the sweep also names the addresses that may open
no more connections for now (``connections.blocked``), and this module puts a
socket filter (classic BPF, ``SO_ATTACH_FILTER``) on the port's listening sockets
that drops a connection's first packet (a SYN without ACK) from those addresses.
Their clients' kernels send it again (after 1 s, 3 s, 7 s...), and get in once the
address is named no more (the next sweep that finds it under its share). Nothing
else is filtered: the connections they hold go on, every other address connects as
before, and with no address named the filter is taken off.

An address is an IPv4 host, an IPv6 /64 (its first 64 bits), or a whole link-local
IPv6 address, as ``service.stages.address_of`` keys clients. A dual-stack socket's
IPv4 clients come as IPv4 packets, and are matched as IPv4.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import socket
import stat
import struct
from collections.abc import Iterable

from aralnode._logs import get_logger

log = get_logger("aralnode.transport")

SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h
SO_DETACH_FILTER = 27
MAX_ADDRESSES = 256  # of each family: the program stays far under BPF_MAXINSNS (4096)

# Classic BPF (linux/filter.h): a socket filter sees the TCP header at offset 0,
# the IP header at SKF_NET_OFF.
_LDB, _LDW, _AND, _JEQ, _JA, _RET = 0x30, 0x20, 0x54, 0x15, 0x05, 0x06
_NET = 0xFFF00000  # SKF_NET_OFF (-0x100000) as the unsigned 32-bit k
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_SYN, _SYN_ACK = 0x02, 0x12

Insn = tuple[int, int, int, int]  # (code, jt, jf, k)


class _SockFilter(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    )


def _words(network: str) -> list[int] | None:
    """The 32-bit words of the source address to match (4 for an IPv6 address, 2 for
    an IPv6 /64, 1 for IPv4), None if ``network`` is none of them."""
    try:
        net = ipaddress.ip_network(network.partition("%")[0], strict=False)  # scope: dropped
    except ValueError:
        return None
    if net.version == 4 and net.prefixlen == 32:
        return [int(net.network_address)]
    if net.version == 6 and net.prefixlen in (64, 128):
        packed = net.network_address.packed[: net.prefixlen // 8]
        return [int.from_bytes(packed[i : i + 4], "big") for i in range(0, len(packed), 4)]
    return None


def program(addresses: Iterable[str]) -> list[Insn]:
    """The filter that drops a SYN (without ACK) from any of ``addresses`` and
    passes every other packet (module docstring)."""
    v4: list[list[int]] = []
    v6: list[list[int]] = []
    for address in sorted(set(addresses)):
        words = _words(address)
        if words is not None:
            (v4 if len(words) == 1 else v6).append(words)
    code: list[Insn] = [
        (_LDB, 0, 0, 13),  # the TCP flags
        (_AND, 0, 0, _SYN_ACK),
        (_JEQ, 1, 0, _SYN),  # a SYN alone: look at its source; anything else passes
        (_RET, 0, 0, _ACCEPT),
        (_LDB, 0, 0, _NET + 0),  # IP version, in the high nibble
        (_AND, 0, 0, 0xF0),
        (_JEQ, 1, 0, 0x40),
        (_JA, 0, 0, 0),  # to the IPv6 part (its offset set below)
        (_LDW, 0, 0, _NET + 12),  # the IPv4 source
    ]
    jump = len(code) - 2
    for (word,) in v4[:MAX_ADDRESSES]:
        code += [(_JEQ, 0, 1, word), (_RET, 0, 0, _DROP)]
    code.append((_RET, 0, 0, _ACCEPT))
    code[jump] = (_JA, 0, 0, len(code) - jump - 1)
    code += [(_JEQ, 1, 0, 0x60), (_RET, 0, 0, _ACCEPT)]
    for words in v6[:MAX_ADDRESSES]:
        for i, word in enumerate(words):  # the IPv6 source is at 8: 4 words
            left = len(words) - i - 1  # words after this one
            code += [(_LDW, 0, 0, _NET + 8 + 4 * i), (_JEQ, 0, 2 * left + 1, word)]
        code.append((_RET, 0, 0, _DROP))
    code.append((_RET, 0, 0, _ACCEPT))
    return code


def attach(sock: socket.socket, code: list[Insn]) -> None:
    """Put ``code`` on ``sock`` (the kernel copies it)."""
    insns = (_SockFilter * len(code))(*(_SockFilter(*insn) for insn in code))
    fprog = struct.pack("@HP", len(code), ctypes.addressof(insns))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def listeners(port: int) -> list[socket.socket]:
    """Duplicates of this process's listening TCP sockets on ``port`` (each once: a
    duplicate made here may take a number listed before it was made)."""
    found: dict[int, socket.socket] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            sock = _listener(name, port)
            if sock is None:
                continue
            inode = os.fstat(sock.fileno()).st_ino
            if inode in found:
                sock.close()
            else:
                found[inode] = sock
    return list(found.values())


def _listener(name: str, port: int) -> socket.socket | None:
    try:
        if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:["):
            return None
        fd = os.dup(int(name))
    except OSError:
        return None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    try:
        if (
            sock.type == socket.SOCK_STREAM
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.getsockname()[1] == port
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        ):
            return sock
    except OSError:
        pass
    sock.close()
    return None


class SynFilter:
    """The filter on ``port``'s listening sockets, kept to the addresses last named."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.blocked: frozenset[str] = frozenset()
        self._failed = False

    def apply(self, addresses: Iterable[str]) -> None:
        """Leave new connections from ``addresses`` waiting (none: take it off). A
        filter that cannot be attached leaves none on any listener (fail open: the
        sweep still sheds), and no more is tried."""
        wanted = frozenset(addresses)
        if self._failed or (wanted == self.blocked):
            return
        if not wanted:
            self.clear()
            return
        code = program(wanted)
        for sock in listeners(self.port):
            with sock:
                try:
                    attach(sock, code)
                except OSError as exc:
                    log.warning("cannot filter the gRPC port's new connections: %s", exc)
                    self._failed = True
                    self.clear()  # (the kernel kept the last program: take every one off)
                    return
        for address in sorted(wanted - self.blocked):
            log.warning("gRPC: new connections from %s wait until it holds fewer", address)
        self.blocked = wanted

    def clear(self) -> None:
        """Take the filter off every listener (always tried, whatever failed before)."""
        for sock in listeners(self.port):
            with sock, contextlib.suppress(OSError):  # (one never attached: fine)
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self.blocked = frozenset()


__all__ = ["SynFilter", "attach", "listeners", "program"]
