"""Character backends for the PL011: where its output goes and its input comes from."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import sys
from collections import deque
from collections.abc import Callable
from typing import BinaryIO


class CharBackend:
    """Output sink; input arrives through `feed` (called by the daemon's I/O)."""

    name = "null"

    def __init__(self) -> None:
        self.pending_input: deque[int] = deque()

    def write(self, data: bytes) -> None:
        pass

    def feed(self, data: bytes) -> None:
        self.pending_input.extend(data)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    async def start(self, on_input: Callable[[], None]) -> None:
        """Begin serving (socket backends); `on_input` is called after each `feed`."""


class StdioBackend(CharBackend):
    name = "stdio"

    def __init__(self, out: BinaryIO | None = None) -> None:
        super().__init__()
        self.out = out if out is not None else sys.stdout.buffer

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()


class FileBackend(CharBackend):
    name = "file"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)

    def describe(self) -> str:
        return f"file:{self.path}"


class RingBackend(CharBackend):
    """In-memory ring buffer (QEMU's ringbuf chardev); the monitor reads it."""

    name = "ringbuf"

    def __init__(self, size: int = 65536) -> None:
        super().__init__()
        self.buffer: deque[int] = deque(maxlen=size)

    def write(self, data: bytes) -> None:
        self.buffer.extend(data)

    def read(self, count: int | None = None) -> bytes:
        count = len(self.buffer) if count is None else min(count, len(self.buffer))
        return bytes(self.buffer.popleft() for _ in range(count))


MAX_BACKLOG = 1 << 20


def remove_stale_socket(path: str) -> None:
    """Unlink a socket left by an earlier run; anything else at `path` is left alone.

    A socket someone still listens on is not stale: OSError(EADDRINUSE), so a second
    daemon never steals the first one's address.
    """
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: left over from a run that died
            return
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running program")


class SocketServerBackend(CharBackend):
    """`unix:PATH,server` / `tcp:HOST:PORT,server`: one client at a time is the console.

    Like QEMU's `server=on,wait=off`: the guest runs whether or not anyone is
    connected, and output while nobody is connected is dropped.  A new client
    replaces the previous one.
    """

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec
        address = spec.removesuffix(",server")
        self.kind, _, self.address = address.partition(":")
        if self.kind == "tcp":
            host, sep, port = self.address.rpartition(":")
            if not sep or not port.isdigit():
                raise ValueError(f"invalid serial address {spec!r} (use tcp:HOST:PORT,server)")
        elif not self.address:
            raise ValueError(f"invalid serial address {spec!r} (use unix:PATH,server)")
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.on_input: Callable[[], None] = lambda: None

    async def start(self, on_input: Callable[[], None]) -> None:
        self.on_input = on_input
        if self.kind == "unix":
            remove_stale_socket(self.address)
            old_umask = os.umask(0o177)
            try:
                self.server = await asyncio.start_unix_server(self._client, self.address)
            finally:
                os.umask(old_umask)
        else:
            host, _, port = self.address.rpartition(":")
            self.server = await asyncio.start_server(self._client, host or "127.0.0.1", int(port))

    def describe(self) -> str:
        if self.server is not None and self.kind == "tcp":
            host, port = self.server.sockets[0].getsockname()[:2]
            return f"tcp:{host}:{port},server"
        return self.spec

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = writer
        try:
            while data := await reader.read(4096):
                self.feed(data)
                self.on_input()
        except ConnectionError:
            pass
        finally:
            if self.writer is writer:
                self.writer = None
            writer.close()

    def write(self, data: bytes) -> None:
        writer = self.writer
        # A console that stops reading loses output rather than growing our memory.
        if writer is not None and writer.transport.get_write_buffer_size() < MAX_BACKLOG:
            writer.write(data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.server is not None:
            self.server.close()
        if self.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.address)


def open_backend(spec: str) -> CharBackend:
    """Parse a QEMU-style -serial argument."""
    if spec == "stdio":
        return StdioBackend()
    if spec in ("null", "none"):
        return CharBackend()
    if spec.startswith("file:") and len(spec) > 5:
        try:
            return FileBackend(spec[5:])
        except OSError as e:
            raise ValueError(f"cannot open serial file {spec[5:]!r}: {e.strerror}") from None
    if spec == "ringbuf":
        return RingBackend()
    if spec.startswith(("unix:", "tcp:")) and spec.endswith(",server"):
        return SocketServerBackend(spec)
    raise ValueError(f"unknown serial backend {spec!r} (use stdio, file:PATH, ringbuf, null, "
                     "unix:PATH,server or tcp:HOST:PORT,server)")
