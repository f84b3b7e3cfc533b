"""gdbstub.server: addresses, one client at a time, disconnects, and fuzzed input."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_gdbstub_session import FakeTarget

from emud.listen import Address
from gdbstub.codec import frame
from gdbstub.server import GdbServer
from gdbstub.session import Session
from gdbstub.target import Interrupted


async def test_unix_socket_one_client_at_a_time_and_disconnect(tmp_path: Path) -> None:
    target = FakeTarget()
    logs: list[str] = []
    server = GdbServer(target, log=logs.append)
    path = tmp_path / "gdb.sock"
    listening = socket.socket(socket.AF_UNIX)  # the application binds (emud.listen does)
    listening.bind(str(path))
    listening.listen()
    await server.serve(listening)
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(frame(b"QStartNoAckMode") + b"+" + frame(b"Z0,1000,2") + frame(b"c"))
    assert await asyncio.wait_for(reader.readexactly(13), 10) == b"+" + frame(b"OK") + frame(b"OK")
    second_reader, second_writer = await asyncio.open_unix_connection(str(path))
    assert await asyncio.wait_for(second_reader.read(), 10) == b""  # refused
    second_writer.close()
    server.report_stop(Interrupted())
    assert await asyncio.wait_for(reader.readexactly(16), 10) == frame(b"T02thread:1;")
    writer.close()  # no `D`: the server detaches on its own
    for _ in range(1000):
        if server.session is None:
            break
        await asyncio.sleep(0.01)
    assert target.calls[-2:] == [("break-", 0x1000, False), ("detach",)]
    await server.close()
    assert listening.fileno() == -1  # closed with the server
    assert any("refused" in line for line in logs)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets an RST, no FIN (as when gdb is killed with
    unread input, or a network path dies)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _answer(sock: socket.socket) -> bytes:
    """What the server sends until two packets have come, or b"" if it closed first."""
    loop = asyncio.get_running_loop()
    reply = b""
    try:
        while reply.count(b"#") < 2 and (chunk := await loop.sock_recv(sock, 4096)):
            reply += chunk
    except ConnectionResetError:  # refused while our `?` was unread
        return b""
    return reply


async def test_reconnect_right_after_a_reset_is_accepted() -> None:
    """The old connection is dead but its task has not seen it yet (its reading is
    held back, as when the loop is busy and sees the new connection first): the new
    connection must still be served, and the old session ended at that moment."""
    target = FakeTarget()
    logs: list[str] = []
    server = GdbServer(target, log=logs.append)
    listening = socket.create_server(("127.0.0.1", 0))
    await server.serve(listening)
    port = listening.getsockname()[1]
    hello = frame(b"QStartNoAckMode") + b"+"
    expected = b"+" + frame(b"OK") + frame(b"T05thread:1;")
    for i in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sock.sendall(hello + frame(b"?"))
        assert await _answer(sock) == expected  # accepted, also right after a reset
        sock.sendall(frame(b"Z0,%x,2" % (0x1000 + 2 * i)) + frame(b"g"))
        assert (await _answer(sock)).startswith(frame(b"OK"))
        assert server._writer is not None
        server._writer.transport.pause_reading()  # type: ignore[attr-defined]
        sock.sendall(frame(b"g"))  # unread input when the reset comes
        _reset(sock)
    assert ("break-", 0x1000 + 2 * 98, False) in target.calls  # ended when the next came
    await server.close()
    assert not any("refused" in line for line in logs)
    assert target.calls.count(("attach",)) == target.calls.count(("detach",)) == 100


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=40),
                          st.binary(max_size=40).map(frame),
                          st.sampled_from([b"g", b"m", b"M", b"X", b"Z", b"z", b"p", b"P", b"c",
                                           b"vCont;", b"qXfer:features:read:target.xml:",
                                           b"qRcmd,", b"Qqemu.sstep=", b"G", b"s", b"C", b"S"])
                          .flatmap(lambda p: st.binary(max_size=30).map(lambda a: frame(p + a)))),
                max_size=12))
def test_arbitrary_input_never_raises(chunks: list[bytes]) -> None:
    session = Session(FakeTarget())
    for chunk in chunks:
        session.feed(chunk)
        session.drain()
    session.close()


def test_emud_run_gdb_options(capsys: pytest.CaptureFixture[str]) -> None:
    from emud.cli import build_parser

    args = build_parser().parse_args(["run", "x.elf", "-s", "-S"])
    assert args.gdb == Address("tcp", host="127.0.0.1", port=1234) and args.paused
    args = build_parser().parse_args(["run", "x.elf", "--gdb", "unix:/tmp/g.sock"])
    assert args.gdb == Address("unix", path="/tmp/g.sock") and not args.paused
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "x.elf", "--gdb", "tcp:host:port"])
    assert "argument --gdb: invalid address" in capsys.readouterr().err
