"""The asyncio side: serve a listening TCP or Unix socket and move bytes to and from a Session.

One gdb at a time; a second connection is refused while one is attached and
alive.  A new connection first checks the attached one's socket: if that peer has
already gone (reset or closed) the old session ends then and the new one is served,
whatever order the loop sees the two events in.  A connection that misbehaves is
dropped; the server keeps listening.
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
        if self.session is not None and self._writer is not None:
            if not _connection_dead(self._writer):
                self.log("refused a second connection: a debugger is already attached")
                writer.close()
                return
            # The old connection already failed (an RST or a FIN its task has not read
            # yet): end it now rather than refuse the debugger that replaces it.
            self._end(self.session, self._writer)
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = writer.get_extra_info("peername") or "unix socket"
        try:
            session = Session(self.target, packet_log=self.packet_log)
        except Exception:  # the target refused to attach: drop this client, keep serving
            self.log("attach failed:\n" + traceback.format_exc())
            writer.close()
            return
        self.session, self._writer = session, writer
        self._connection = asyncio.current_task()
        self.log(f"debugger attached from {peer}")
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
            if self.session is session:  # not yet ended for a connection that replaced it
                self._end(session, writer)
            writer.close()

    def _end(self, session: Session, writer: asyncio.StreamWriter) -> None:
        """Detach `session` (the attached one) and close its connection; at once, so
        that a new connection is accepted from here on."""
        try:
            session.close()
        except Exception:
            self.log("detach failed:\n" + traceback.format_exc())
        self._flush()
        self.session = self._writer = self._connection = None
        writer.close()  # after what is queued (the `OK` of a `D`) has been sent
        self.log("debugger detached")


_TCP_ESTABLISHED = 1  # Linux's tcp_info.tcpi_state; a reset gives CLOSE, a FIN CLOSE_WAIT


def _connection_dead(writer: asyncio.StreamWriter) -> bool:
    """Whether the peer is gone (reset or closed), asked of the socket itself without
    reading: its connection's task may not have seen the end yet, and input the peer
    sent before it went may still wait to be read."""
    if writer.is_closing():
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_INFO"):
        with contextlib.suppress(OSError):
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            return bool(state != _TCP_ESTABLISHED)
    try:  # elsewhere: an end with no input left before it
        with sock.dup() as probe:
            data = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # alive, nothing to read
    except OSError:
        return True  # reset
    return not data  # b"": closed
