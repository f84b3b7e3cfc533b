"""The asyncio side: serve a listening TCP or Unix socket and move bytes to and from a Session.

One gdb at a time; a second connection is refused while one is attached.
A connection that misbehaves is dropped; the server keeps listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import traceback
from collections.abc import Callable

from gdbstub.session import PacketLog, Session
from gdbstub.target import StopReason, Target


def _log(message: str) -> None:
    print(f"emud: gdb: {message}", file=sys.stderr, flush=True)


class GdbServer:
    def __init__(self, target: Target, log: Callable[[str], None] = _log,
                 packet_log: PacketLog | None = None) -> None:
        self.target = target
        self.log = log
        self.packet_log = packet_log
        self.session: Session | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connection: asyncio.Task[None] | None = None
        self._server: asyncio.AbstractServer | None = None

    async def serve(self, sock: socket.socket) -> None:
        """Accept debuggers on `sock`, a listening TCP or Unix socket.

        The caller binds it and removes a socket file afterwards: where to
        listen, and what may be replaced there, is the application's policy.
        """
        if sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve, sock=sock)

    async def close(self) -> None:
        # End the connection by closing it, not by cancelling its task: its reader sees
        # EOF and it detaches as on any disconnect.
        if self._writer is not None:
            self._writer.close()
        if self._connection is not None:
            await self._connection
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def report_stop(self, reason: StopReason) -> None:
        """The target stopped (or exited): tell the attached gdb, if it is waiting."""
        if self.session is not None:
            self.session.stopped(reason)
            self._flush()

    def _flush(self) -> None:
        if self.session is not None and self._writer is not None:
            data = self.session.drain()
            if data and not self._writer.is_closing():
                self._writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.session is not None:
            self.log("refused a second connection: a debugger is already attached")
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername") or "unix socket"
        try:
            self.session = Session(self.target, packet_log=self.packet_log)
        except Exception:  # the target refused to attach: drop this client, keep serving
            self.log("attach failed:\n" + traceback.format_exc())
            writer.close()
            return
        self._writer = writer
        self._connection = asyncio.current_task()
        self.log(f"debugger attached from {peer}")
        session = self.session
        try:
            while not session.closed:
                data = await reader.read(65536)
                if not data:
                    break
                session.feed(data)
                self._flush()
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:  # a bug in a handler must not take the daemon down
            self.log("dropping the connection after an internal error:\n"
                     + traceback.format_exc())
        finally:
            try:
                session.close()
            except Exception:
                self.log("detach failed:\n" + traceback.format_exc())
            self._flush()
            self.session = self._writer = self._connection = None
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
            self.log("debugger detached")
