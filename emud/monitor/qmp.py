"""A QMP-compatible server (QEMU's docs/interop/qmp-spec.rst) over Unix or TCP sockets.

Input is a stream of JSON objects (no framing needed: qemu.qmp sends them
back to back); output is one object per line (CRLF, ASCII).  Each client gets
the greeting, must negotiate with `qmp_capabilities`, then runs commands in
order; replies echo the request's `id` verbatim and carry none when the
request had none.  Events go to every negotiated client.  Many clients at
once; a client that vanishes, sends garbage or floods us never touches the
VM's run state.  No capabilities are offered (no out-of-band execution).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from emud.chardev import remove_stale_socket
from emud.monitor.core import Monitor
from emud.monitor.errors import MonitorError

MAX_MESSAGE = 10 << 20  # qemu.qmp's own read limit
MAX_BACKLOG = 16 << 20  # unread output after which a client is dropped


def default_socket_path() -> str:
    """Where `emud run --qmp` listens and `emud shell` connects when given no address."""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/emud-{os.getuid()}"
    return os.path.join(runtime, "emud", "qmp.sock")


def parse_address(spec: str) -> tuple[str, str | tuple[str, int]]:
    """`unix:PATH`, a bare PATH, or `tcp:HOST:PORT` (port 0 picks a free one)."""
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid QMP address {spec!r} (use tcp:HOST:PORT)")
        return "tcp", (host or "127.0.0.1", int(port))
    path = spec[5:] if spec.startswith("unix:") else spec
    if not path:
        raise ValueError(f"invalid QMP address {spec!r} (use unix:PATH or tcp:HOST:PORT)")
    return "unix", path


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=True).encode() + b"\r\n"


_JSON_BYTES = frozenset(b" \t\r\n{}[]:,-+.0123456789eEtruefalsn")


class JsonSplitter:
    """Cuts a byte stream into top-level JSON values, like QEMU's json-streamer.

    Objects and arrays end when their brackets balance (strings and escapes
    respected); a stray scalar or bracket is a value of its own, which the
    caller then rejects.  A byte that cannot appear in JSON outside a string
    ends the current value at once (as QEMU's lexer errors do), so garbage
    costs one error reply and never swallows the commands after it.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.depth = 0
        self.pos = 0  # scan position in buffer
        self.in_string = self.escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        buf = self.buffer
        while self.pos < len(buf):
            ch = buf[self.pos]
            self.pos += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == 0x5C:  # backslash
                    self.escaped = True
                elif ch == 0x22:
                    self.in_string = False
            elif ch == 0x22:
                self.in_string = True
            elif ch not in _JSON_BYTES:  # the rest of this word belongs to the same error
                while self.pos < len(buf) and buf[self.pos] not in b" \t\r\n{":
                    self.pos += 1
                out.append(self._take())
            elif ch in b"{[":
                self.depth += 1
            elif ch in b"}]":
                self.depth -= 1
                if self.depth <= 0:
                    out.append(self._take())
            elif self.depth == 0 and chr(ch).isspace():
                if self.buffer[: self.pos].strip():  # a scalar ends at white space
                    out.append(self._take())
                else:
                    del buf[: self.pos]
                    self.pos = 0
        return out

    def _take(self) -> bytes:
        value = bytes(self.buffer[: self.pos]).strip()
        del self.buffer[: self.pos]
        self.pos = self.depth = 0
        return value

    @property
    def pending(self) -> int:
        return len(self.buffer)


class QmpClient:
    """Server side of one connection."""

    def __init__(self, server: QmpServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.monitor = server.monitor.fork()
        self.negotiated = False

    def send(self, message: dict[str, Any]) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_BACKLOG:
            transport.abort()  # a client that never reads must not eat our memory
            return
        self.writer.write(encode(message))

    def reply(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        if "id" in request:
            body["id"] = request["id"]
        self.send(body)

    def error(self, request: dict[str, Any], desc: str, error_class: str = "GenericError") -> None:
        self.reply(request, {"error": {"class": error_class, "desc": desc}})

    async def serve(self) -> None:
        self.send({"QMP": {"version": self.monitor.registry.qmp["query-version"].handler(
            self.monitor), "capabilities": []}})
        splitter = JsonSplitter()
        while True:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            for message in splitter.feed(data):
                await self.handle(message)
            if splitter.pending > MAX_MESSAGE:
                self.error({}, "JSON parse error, message too long")
                return
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def handle(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.error({}, f"JSON parse error, {e}")
            return
        if not isinstance(request, dict):
            self.error({}, "QMP input must be a JSON object")
            return
        for key in request:
            if key not in ("execute", "arguments", "id"):
                self.error(request, f"QMP input member '{key}' is unexpected")
                return
        name = request.get("execute")
        arguments = request.get("arguments", {})
        if name is None:
            self.error(request, "QMP input lacks member 'execute'")
        elif not isinstance(name, str):
            self.error(request, "QMP input member 'execute' must be a string")
        elif not isinstance(arguments, dict):
            self.error(request, "QMP input member 'arguments' must be an object")
        elif name == "qmp_capabilities":
            self.negotiate(request, arguments)
        elif not self.negotiated:
            self.error(request, "Expecting capabilities negotiation with 'qmp_capabilities'",
                       "CommandNotFound")
        else:
            await self.execute(request, name, arguments)

    def negotiate(self, request: dict[str, Any], arguments: dict[str, Any]) -> None:
        if self.negotiated:
            self.error(request, "Capabilities negotiation is already complete, command ignored",
                       "CommandNotFound")
            return
        for key, value in arguments.items():
            if key != "enable":
                self.error(request, f"Parameter '{key}' is unexpected")
                return
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                self.error(request, "Invalid parameter type for 'enable', expected: array")
                return
            if value:
                self.error(request, f"Capability {value[0]} not available")
                return
        self.negotiated = True
        self.reply(request, {"return": {}})

    async def execute(self, request: dict[str, Any], name: str, arguments: dict[str, Any]) -> None:
        try:
            result = await self.monitor.execute_qmp(name, arguments)
        except MonitorError as e:
            self.error(request, e.desc, e.error_class)
        except Exception as e:  # a bug in one command must not take the daemon down
            print(f"emud: QMP command {name} failed: {e!r}", file=sys.stderr)
            self.error(request, f"internal error in '{name}': {e}")
        else:
            self.reply(request, {"return": result})


class QmpServer:
    def __init__(self, monitor: Monitor, address: str) -> None:
        self.monitor = monitor
        self.kind, self.address = parse_address(address)
        monitor.shared_door = self.kind != "unix"  # every local user can reach a TCP port
        self.clients: set[QmpClient] = set()
        self._server: asyncio.Server | None = None

    @property
    def description(self) -> str:
        """Where clients connect, with the real port when tcp:…:0 was asked for."""
        if self.kind == "unix":
            return f"unix:{self.address}"
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"tcp:{host}:{port}"

    async def start(self) -> None:
        if self.kind == "unix":
            path = str(self.address)
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
            remove_stale_socket(path)
            old_umask = os.umask(0o177)  # the socket is born 0600: no window for others
            try:
                self._server = await asyncio.start_unix_server(self._accept, path)
            finally:
                os.umask(old_umask)
        else:
            assert isinstance(self.address, tuple)
            host, port = self.address
            self._server = await asyncio.start_server(self._accept, host, port)
        self.monitor.daemon.listeners.append(self.broadcast)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = QmpClient(self, reader, writer)
        self.clients.add(client)
        try:
            await client.serve()
        finally:
            self.clients.discard(client)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def broadcast(self, event: str, data: dict[str, Any]) -> None:
        now = time.time()
        message: dict[str, Any] = {"event": event}
        if data:
            message["data"] = data
        message["timestamp"] = {"seconds": int(now), "microseconds": int(now % 1 * 1_000_000)}
        for client in list(self.clients):
            if client.negotiated:
                client.send(message)

    async def close(self) -> None:
        """Flush what clients have been sent (SHUTDOWN, quit's reply), then stop serving."""
        if self.broadcast in self.monitor.daemon.listeners:
            self.monitor.daemon.listeners.remove(self.broadcast)
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(client.writer.drain(), 1.0)
            client.writer.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self.kind == "unix":
            with contextlib.suppress(OSError):
                os.unlink(str(self.address))
