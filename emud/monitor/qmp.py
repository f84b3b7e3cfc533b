"""A QMP-compatible server (QEMU's docs/interop/qmp-spec.rst) over Unix or TCP sockets.

Input is a stream of JSON objects (no framing needed: qemu.qmp sends them
back to back), read by QEMU's rules (emud.monitor.qmpjson); output is one
object per line (CRLF, ASCII), always JSON.  Each client gets
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
import time
from typing import Any

from emud.listen import Address, Listener, parse_address
from emud.monitor.core import Monitor
from emud.monitor.errors import MonitorError, internal_error
from emud.monitor.qmpjson import JsonError, JsonStreamer, dumps

MAX_MESSAGE = 10 << 20  # qemu.qmp's own read limit
MAX_BACKLOG = 16 << 20  # unread output after which a client is dropped


def encode(message: dict[str, Any]) -> bytes:
    """One output line.  The id goes back as it came, at any depth (json.dumps
    recurses); NaN and infinities are refused (ValueError): they are not JSON."""
    body = json.dumps({k: v for k, v in message.items() if k != "id"}, allow_nan=False)
    if "id" in message:
        body = f'{body[:-1]}{", " if len(message) > 1 else ""}"id": {dumps(message["id"])}}}'
    return body.encode() + b"\r\n"


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
        try:
            line = encode(message)
        except (TypeError, ValueError) as e:  # a result not JSON (NaN, bytes): a bug, still a reply
            error = {"class": "GenericError", "desc": f"internal error: reply not JSON: {e}"}
            line = encode({"error": error} | ({"id": message["id"]} if "id" in message else {}))
        self.writer.write(line)

    def reply(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        if "id" in request:
            body["id"] = request["id"]
        self.send(body)

    def error(self, request: dict[str, Any], desc: str, error_class: str = "GenericError") -> None:
        self.reply(request, {"error": {"class": error_class, "desc": desc}})

    async def serve(self) -> None:
        self.send({"QMP": {"version": self.monitor.registry.qmp["query-version"].handler(
            self.monitor), "capabilities": []}})
        streamer = JsonStreamer()
        while True:
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            for message in streamer.feed(data):
                await self.handle(message)
                # Back-pressure per command: a client that pipelines many big replies
                # (x/…, info …) and reads slowly waits here instead of being dropped.
                with contextlib.suppress(ConnectionError):
                    await self.writer.drain()
            if streamer.pending > MAX_MESSAGE:
                self.error({}, "JSON parse error, message too long")
                return

    async def handle(self, request: Any) -> None:
        if isinstance(request, JsonError):
            self.error({}, request.desc)
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
        if name in self.monitor.registry.qmp and (bad := _nul_argument(arguments)) is not None:
            self.error(request, f"Invalid parameter '{bad}': a string must not contain U+0000")
            return
        try:
            result = await self.monitor.execute_qmp(name, arguments)
        except MonitorError as e:
            self.error(request, e.desc, e.error_class)
        except Exception as e:  # a bug in one command must not take the daemon down
            self.error(request, internal_error(name, e).desc)
        else:
            self.reply(request, {"return": result})


def _nul_argument(arguments: dict[str, Any]) -> str | None:
    """The first argument holding a string with U+0000 anywhere in it, if any.

    QEMU's JSON parser takes `\\u0000`, but its commands see C strings, where
    it cannot be a character; emud's would pass it on to paths and names, so
    it is refused for every command alike.  Iterative: arguments may nest 1024 deep.
    """
    for name, value in arguments.items():
        todo = [value]
        while todo:
            item = todo.pop()
            if isinstance(item, str):
                if "\0" in item:
                    return name
            elif isinstance(item, dict):
                if any("\0" in key for key in item):
                    return name
                todo.extend(item.values())
            elif isinstance(item, list):
                todo.extend(item)
    return None


class QmpServer:
    def __init__(self, monitor: Monitor, address: str | Address, option: str = "--qmp") -> None:
        """`address` as `--qmp` takes it; a bad one raises AddressError (a ValueError)."""
        self.monitor = monitor
        self.address = parse_address(address) if isinstance(address, str) else address
        self.option = option  # named in errors
        monitor.shared_door = self.address.kind != "unix"  # every local user can reach TCP
        self.clients: set[QmpClient] = set()
        self._server: asyncio.Server | None = None
        self._listener: Listener | None = None

    @property
    def description(self) -> str:
        """Where clients connect, with the real port when tcp:…:0 was asked for."""
        return str(self._listener or self.address)

    async def start(self) -> None:
        """Listen (emud.listen's policy: 0600, stale sockets only replaced); raises ListenError."""
        listener = Listener(self.option, self.address)
        try:
            self._server = await listener.start_server(self._accept)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
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
            try:
                await asyncio.wait_for(client.writer.drain(), 1.0)
            except (ConnectionError, TimeoutError):
                client.writer.transport.abort()  # a client that stopped reading: drop its backlog
            client.writer.close()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
