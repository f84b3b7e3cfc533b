"""Character backends for the PL011: where its output goes and its input comes from."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import BinaryIO

from emud.hostfiles import open_private
from emud.listen import Address, AddressError, Listener, parse_address


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
        self.fd = open_private(path)  # 0600, never through a symlink: guest output is private

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


def parse_serial_socket(spec: str) -> Address:
    """`unix:PATH,server` or `tcp:HOST:PORT,server` (emud.listen's grammar plus `,server`)."""
    if not spec.endswith(",server"):
        raise AddressError(f"invalid serial socket {spec!r}: only server mode is supported "
                           "(unix:PATH,server or tcp:HOST:PORT,server)")
    return parse_address(spec.removesuffix(",server"))


class SocketServerBackend(CharBackend):
    """`unix:PATH,server` / `tcp:HOST:PORT,server`: one client at a time is the console.

    Like QEMU's `server=on,wait=off`: the guest runs whether or not anyone is
    connected, and output while nobody is connected is dropped.  A new client
    replaces the previous one.
    """

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.address = parse_serial_socket(spec)
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None
        self.listener: Listener | None = None
        self.on_input: Callable[[], None] = lambda: None

    async def start(self, on_input: Callable[[], None]) -> None:
        """Listen (emud.listen's policy); raises ListenError naming -serial."""
        self.on_input = on_input
        self.listener = Listener("-serial", self.address)
        self.server = await self.listener.start_server(self._client)

    def describe(self) -> str:
        return f"{self.listener or self.address},server"

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
        if self.listener is not None:
            self.listener.close()  # removes only a socket file it created


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
            why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise ValueError(f"-serial: cannot open {spec}: {why}") from None
    if spec == "ringbuf":
        return RingBackend()
    if spec.startswith(("unix:", "tcp:")):
        return SocketServerBackend(spec)
    raise ValueError(f"unknown serial backend {spec!r} (use stdio, file:PATH, ringbuf, null, "
                     "unix:PATH,server or tcp:HOST:PORT,server)")
