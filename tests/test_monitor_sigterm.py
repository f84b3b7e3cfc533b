"""SIGTERM ends `emud run` cleanly while a monitor command is still working."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from typing import Any

import pytest
from qemu.qmp import EventListener, QMPClient

from conftest import IMAGES, ROOT

TIMEOUT = 60.0  # a failure guard only: a first start on a fresh machine can be slow
EMUD = [sys.executable, "-m", "emud", "run"]


async def connect(sock: str) -> QMPClient:
    client = QMPClient("sigterm-test")
    await asyncio.wait_for(client.connect(sock), TIMEOUT)
    return client


async def icount(client: QMPClient) -> int:
    """The answer only comes while the daemon's loop is free to serve it."""
    clock = await asyncio.wait_for(client.execute("x-emud-query-clock"), TIMEOUT)
    assert isinstance(clock, dict)
    return int(clock["icount"])


@pytest.mark.parametrize(("command", "arguments", "start_paused"), [
    ("x-emud-step", {"count": 10_000_000}, True),
    ("x-emud-run-for", {"duration": "3600s"}, False),
])
async def test_sigterm_during_a_long_command(command: str, arguments: dict[str, object],
                                             start_paused: bool) -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="emud-term-"), "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        *EMUD, str(IMAGES / "counter.elf"), "--qmp", f"unix:{sock}", "-serial", "null",
        *(["-S"] if start_paused else []), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        banner = (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode()
        assert "QMP listening" in banner
        worker, watcher = await connect(sock), await connect(sock)
        with watcher.listen(listener := EventListener()):
            busy = asyncio.create_task(worker.execute(command, arguments))
            # Wait (on the other connection) until the command is under way.
            start = await icount(watcher)
            while await icount(watcher) < start + 100_000:
                assert not busy.done()
            proc.send_signal(signal.SIGTERM)
            events: list[Any] = []
            while not events or events[-1]["event"] != "SHUTDOWN":
                events.append(await asyncio.wait_for(listener.get(), TIMEOUT))
        assert events[-1]["data"] == {"guest": False, "reason": "host-signal"}
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        errors = (await proc.stderr.read()).decode()
        assert "Traceback" not in errors and "Error" not in errors, errors
        with contextlib.suppress(Exception):  # the daemon is gone: either answer is fine
            await asyncio.wait_for(busy, TIMEOUT)
        for client in (worker, watcher):
            with contextlib.suppress(Exception):
                await client.disconnect()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
