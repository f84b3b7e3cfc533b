"""Character backends for the PL011: where its output goes and its input comes from."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Protocol

from emud.hostfiles import open_private
from emud.listen import Address, AddressError, Listener, parse_address

if TYPE_CHECKING:
    import asyncio


class CharFrontend(Protocol):
    """The device side of a serial port (QEMU's chardev front-end handlers)."""

    def can_receive(self) -> int:
        """How many bytes the device takes now (0: hold them)."""
        ...

    def receive(self, data: bytes) -> int:
        """Take up to `can_receive()` bytes; returns how many were consumed."""
        ...


# Input held for the guest beyond which sources stop reading (a pipe or a socket then
# waits in the kernel): a guest that never reads cannot make emud grow without bound.
INPUT_BACKLOG = 1 << 16


class CharBackend:
    """One serial port's host side: output sink, and input held until the device takes it.

    Input (`feed`) goes to the attached front end at once as far as it can take
    it; the rest is held, in order, and delivered when the device calls
    `accept_input` (it freed FIFO space or enabled its receiver).  So when a byte
    enters the device depends only on the guest, never on how runs are sliced.
    """

    name = "null"

    def __init__(self) -> None:
        self._held = bytearray()
        self._frontend: CharFrontend | None = None
        # Whether sources may read more input (see INPUT_BACKLOG); `input_room` is its
        # asyncio.Event, made on first use: a plain run has no event loop (emud.foreground).
        self.has_input_room = True
        self._room_event: asyncio.Event | None = None
        # Record/replay (emud/replay): host input goes through `input_hook` (which logs it,
        # or refuses it while a recorded session replays: False); `muted` drops output the
        # host already received, while history is re-executed.
        self.input_hook: Callable[[CharBackend, bytes], bool] | None = None
        self.muted = False

    @property
    def input_room(self) -> asyncio.Event:
        """Set while sources may read more input (see INPUT_BACKLOG)."""
        if self._room_event is None:
            import asyncio

            self._room_event = asyncio.Event()
            if self.has_input_room:
                self._room_event.set()
        return self._room_event

    def attach(self, frontend: CharFrontend) -> None:
        self._frontend = frontend
        self.accept_input()

    @property
    def pending_input(self) -> int:
        """Bytes held for the guest."""
        return len(self._held)

    def feed(self, data: bytes) -> None:
        """Input from the host side, in arrival order."""
        if self.input_hook is not None and not self.input_hook(self, data):
            return
        self.deliver(data)

    def deliver(self, data: bytes) -> None:
        """Input handed to the machine's port (a live feed, or a recorded one replayed)."""
        self._held += data
        self.accept_input()

    @property
    def held(self) -> bytes:
        return bytes(self._held)

    @held.setter
    def held(self, data: bytes) -> None:
        """Restore the held input of a replay checkpoint (it is part of the machine's past)."""
        self._held[:] = data

    def transmit(self, data: bytes) -> None:
        """Output from the device: to `write`, unless the host already had it (`muted`)."""
        if not self.muted:
            self.write(data)

    def accept_input(self) -> None:
        """The front end may take more: deliver what is held, as far as it goes."""
        frontend = self._frontend
        held = self._held
        while held and frontend is not None and (room := frontend.can_receive()) > 0:
            taken = frontend.receive(bytes(held[:room]))
            if taken <= 0:
                break
            del held[:taken]
        self.has_input_room = len(held) < INPUT_BACKLOG
        if self._room_event is not None:
            if self.has_input_room:
                self._room_event.set()
            else:
                self._room_event.clear()

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name

    async def start(self, on_input: Callable[[], None]) -> None:
        """Begin serving (socket backends); `on_input` is called after each `feed`."""


class StdioBackend(CharBackend):
    """Output to stdout; input from stdin (a terminal, a pipe or a regular file)."""

    name = "stdio"

    def __init__(self, out: BinaryIO | None = None, input_fd: int | None = None) -> None:
        super().__init__()
        self.out = out if out is not None else sys.stdout.buffer
        self.input_fd = _stdin_fd() if input_fd is None else input_fd
        self._reader: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    async def start(self, on_input: Callable[[], None]) -> None:
        fd = self.input_fd
        if fd < 0:
            return
        if stat.S_ISREG(os.fstat(fd).st_mode):
            # A file's input is there from the guest's first instruction on, however the
            # event loop schedules the reader.
            self.read_file_input()
        import asyncio

        self._reader = asyncio.create_task(self._read_input(fd, on_input))

    def read_file_input(self) -> None:
        """Take all of a regular file's input that fits the backlog, at once."""
        while self.has_input_room and (data := os.read(self.input_fd, 4096)):
            self.feed(data)

    async def _read_input(self, fd: int, on_input: Callable[[], None]) -> None:
        """Read stdin while there is room (INPUT_BACKLOG) until end of file."""
        import asyncio

        loop = asyncio.get_running_loop()
        pollable = True
        while True:
            await self.input_room.wait()
            if pollable:
                readable = loop.create_future()
                try:
                    loop.add_reader(fd, readable.set_result, None)
                except PermissionError:  # a regular file (`< input`): epoll refuses it
                    pollable = False
                else:
                    try:
                        await readable
                    finally:
                        loop.remove_reader(fd)
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                return
            self.feed(data)
            on_input()
            await asyncio.sleep(0)  # a file is always readable: let the guest run

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()


def _stdin_fd() -> int:
    """stdin's descriptor, or -1 when there is none (closed, or replaced in tests)."""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (OSError, ValueError, AttributeError):
        return -1
    return fd


class FileBackend(CharBackend):
    name = "file"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fd = open_private(path)  # 0600, never through a symlink: guest output is private

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd >= 0:  # closing twice is harmless (error paths close what they opened)
            os.close(self.fd)
            self.fd = -1

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
            while True:
                await self.input_room.wait()  # held input has room (INPUT_BACKLOG)
                if not (data := await reader.read(4096)):
                    break
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
