"""Character backends for the PL011: where its output goes and its input comes from."""

from __future__ import annotations

import os
import sys
from collections import deque
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
    raise ValueError(f"unknown serial backend {spec!r} (use stdio, file:PATH, ringbuf or null)")
