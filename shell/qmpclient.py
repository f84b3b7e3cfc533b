"""A small asyncio QMP client: the shell's only way to talk to the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

EventHandler = Callable[[dict[str, Any]], None]


class QmpError(Exception):
    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


class Disconnected(Exception):
    """The daemon closed the connection (it quit, or went away)."""


class QmpConnection:
    def __init__(self, on_event: EventHandler | None = None) -> None:
        self.on_event = on_event or (lambda event: None)
        self.greeting: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None

    async def connect(self, address: str) -> None:
        """`unix:PATH`, a bare PATH or `tcp:HOST:PORT`; reads the greeting and negotiates."""
        if address.startswith("tcp:"):
            host, _, port = address[4:].rpartition(":")
            self._reader, self._writer = await asyncio.open_connection(host, int(port),
                                                                       limit=16 << 20)
        else:
            path = address.removeprefix("unix:")
            self._reader, self._writer = await asyncio.open_unix_connection(path, limit=16 << 20)
        line = await self._reader.readline()
        if not line:
            raise Disconnected("the daemon closed the connection before greeting")
        self.greeting = json.loads(line)
        self._task = asyncio.create_task(self._read_loop())
        await self.execute("qmp_capabilities")

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if "event" in message:
                    self.on_event(message)
                    continue
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():  # a caller may stop waiting
                    future.set_result(message)
        except (ConnectionError, ValueError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(Disconnected("the daemon closed the connection"))
            self._pending.clear()

    @property
    def connected(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def closed(self) -> asyncio.Task[None]:
        """Done when the daemon has closed the connection."""
        assert self._task is not None, "not connected"
        return self._task

    async def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        if self._writer is None or not self.connected:
            raise Disconnected("not connected to the daemon")
        self._next_id += 1
        request: dict[str, Any] = {"execute": name, "id": self._next_id}
        if arguments:
            request["arguments"] = arguments
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self._writer.write(json.dumps(request).encode() + b"\n")
        reply = await future
        if "error" in reply:
            raise QmpError(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            await self._task
