"""A long reverse-continue runs in slices of the daemon's loop: QMP answers meanwhile,
and Ctrl-C cancels it back to where it started.  In process, over real sockets: a raw
gdb client at packet level and qemu.qmp, so the search itself can be inspected."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from qemu.qmp import ExecuteError, QMPClient
from test_replay import machine, state

from emud.daemon import Daemon
from emud.gdbserver import start_gdb_server
from emud.listen import parse_address
from emud.monitor import Monitor
from emud.monitor.qmp import QmpServer
from emud.replay import Replay
from gdbstub.codec import frame

HISTORY = 2_500_000  # instructions: the search replays them in over 100 slices
TIMEOUT = 60


@dataclass
class Setup:
    daemon: Daemon
    replay: Replay
    qmp: QMPClient
    other: QMPClient  # a second QMP client
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def packet(self) -> bytes:
        """The next packet's payload (no-ack mode: nothing else arrives)."""
        await asyncio.wait_for(self.reader.readuntil(b"$"), TIMEOUT)
        data = await asyncio.wait_for(self.reader.readuntil(b"#"), TIMEOUT)
        await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        return data[:-1]

    def send(self, payload: bytes) -> None:
        self.writer.write(frame(payload))


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    m = machine("counter.elf")
    daemon = Daemon(m, start_paused=True, exit_on_poweroff=False)
    replay = Replay(m, interval=1_000_000, seconds=None)  # a fixed layout of checkpoints
    daemon.attach_replay(replay)
    while m.clock.icount < HISTORY:  # the history, built before any client is served
        replay.run_slice()
    gdb_sock = socket.socket()
    gdb_sock.bind(("127.0.0.1", 0))
    gdb_sock.listen()
    server = await start_gdb_server(daemon, gdb_sock)
    qmp_server = QmpServer(Monitor(daemon), parse_address("tcp:127.0.0.1:0"))
    await qmp_server.start()
    run = asyncio.create_task(daemon.run())
    qmp, other = QMPClient("test"), QMPClient("other")
    host, port = qmp_server.description.removeprefix("tcp:").rsplit(":", 1)
    await asyncio.wait_for(qmp.connect((host, int(port))), TIMEOUT)
    await asyncio.wait_for(other.connect((host, int(port))), TIMEOUT)
    reader, writer = await asyncio.open_connection(*gdb_sock.getsockname())
    s = Setup(daemon, replay, qmp, other, reader, writer)
    try:
        writer.write(frame(b"QStartNoAckMode"))
        await asyncio.wait_for(reader.readexactly(1), TIMEOUT)  # its ack
        assert await s.packet() == b"OK"
        yield s
    finally:
        writer.close()
        await qmp.disconnect()
        await other.disconnect()
        daemon.quit()
        await asyncio.wait_for(run, TIMEOUT)
        await server.close()
        await qmp_server.close()
        gdb_sock.close()


async def test_qmp_answers_while_reverse_continue_searches(setup: Setup) -> None:
    replay = setup.replay
    setup.send(b"bc")  # no breakpoint: the search replays all of history
    info = await asyncio.wait_for(setup.qmp.execute("query-replay"), TIMEOUT)
    search = replay.travel
    assert search is not None and not search.done, "QMP waited for the whole search"
    assert search.slices > 0 and isinstance(info, dict) and info["head"] == HISTORY
    status = await asyncio.wait_for(setup.qmp.execute("query-status"), TIMEOUT)
    assert isinstance(status, dict) and status["status"] == "prelaunch"
    assert not search.done
    assert (await setup.packet()).startswith(b"T05replaylog:begin;")
    assert search.done and not search.cancelled and search.slices > 100
    assert replay.icount == 0


async def test_ctrl_c_cancels_the_search_back_to_where_it_started(setup: Setup) -> None:
    replay, m = setup.replay, setup.daemon.machine
    setup.send(b"Z0,80100000,4")  # never executed: the search goes all the way
    assert await setup.packet() == b"OK"
    before = state(m)
    setup.send(b"bc")
    await asyncio.wait_for(setup.qmp.execute("query-replay"), TIMEOUT)  # searching now
    search = replay.travel
    assert search is not None and not search.done
    setup.writer.write(b"\x03")
    assert (await setup.packet()).startswith(b"T02")
    assert search.cancelled and setup.daemon.job is None
    assert state(m) == before
    info = await setup.qmp.execute("query-replay")
    assert isinstance(info, dict) and info["icount"] == HISTORY and info["mode"] == "record"
    assert m.hart.breakpoints, "the breakpoint is armed again"
    setup.send(b"bs")  # history is intact: one step back, and forward again
    assert (await setup.packet()).startswith(b"T05")
    assert replay.icount == HISTORY - 1


SEEK = 1_990_000  # far from the checkpoint before it (at 1M): a seek of many slices


async def seeking(setup: Setup) -> dict[str, object]:
    """Ask the other client until its answer shows the seek under way (the two
    connections race, so the first answers may come before the seek began)."""
    async def poll() -> dict[str, object]:
        while True:
            info = await setup.other.execute("query-replay")
            assert isinstance(info, dict)
            if setup.replay.travel is not None:
                return info

    return await asyncio.wait_for(poll(), TIMEOUT)


async def test_qmp_answers_while_replay_seek_replays(setup: Setup) -> None:
    replay = setup.replay
    seek = asyncio.create_task(setup.qmp.execute("replay-seek", {"icount": SEEK}))
    info = await seeking(setup)
    travel = replay.travel
    assert travel is not None and not travel.done, "the other client waited for the seek"
    assert info["head"] == HISTORY
    await asyncio.wait_for(seek, TIMEOUT)
    assert travel.done and not travel.cancelled and travel.slices > 40
    assert replay.icount == SEEK


async def test_stop_cancels_a_replay_seek_where_it_started(setup: Setup) -> None:
    replay, m = setup.replay, setup.daemon.machine
    before = state(m)
    seek = asyncio.create_task(setup.qmp.execute("replay-seek", {"icount": SEEK}))
    await seeking(setup)
    assert replay.travel is not None and not replay.travel.done
    await asyncio.wait_for(setup.other.execute("stop"), TIMEOUT)
    with pytest.raises(ExecuteError, match="replay-seek was cancelled"):
        await asyncio.wait_for(seek, TIMEOUT)
    assert state(m) == before and replay.travel is not None and replay.travel.cancelled


def test_an_input_during_a_search_cancels_it_and_lands_where_it_started() -> None:
    m = machine("counter.elf")
    replay = Replay(m, interval=1_000_000, seconds=None)  # a fixed layout of checkpoints
    while m.clock.icount < 300_000:
        replay.run_slice()
    before = state(m)
    travel = replay.reverse_search()
    for _ in range(3):
        assert not travel.advance()
    assert m.clock.icount < 300_000  # replaying history, on the way back
    m.bus.write_bytes(0x8010_0000, b"\x5a")  # a control plane writes on that state
    replay.memory_written(0x8010_0000, b"\x5a")
    assert travel.cancelled and travel.advance()
    assert state(m)[:-1] == before[:-1] and m.bus.read_bytes(0x8010_0000, 1) == b"\x5a"
    event = replay.events[-1]
    assert (event.icount, event.data) == (300_000, b"\x5a") and not replay.replaying
