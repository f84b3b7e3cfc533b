"""query-replay, replay-seek, replay-break over the real QMP socket (qemu.qmp)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient
from test_qmp_cli import qmp_daemon

from conftest import IMAGES


async def query(qmp: QMPClient) -> dict[str, Any]:
    info = await qmp.execute("query-replay")
    assert isinstance(info, dict)
    return info


async def regs(qmp: QMPClient) -> str:
    return str(await qmp.execute("human-monitor-command", {"command-line": "info registers"}))


async def test_seek_back_and_forth_and_replay_break() -> None:
    async with qmp_daemon(str(IMAGES / "counter.elf"), "-S", "--qmp", "tcp:127.0.0.1:0",
                          "-serial", "null") as (_, qmp):
        await qmp.execute("human-monitor-command", {"command-line": "step 300000"})
        info = await query(qmp)
        assert info["mode"] == "record" and info["icount"] == 300_000
        at_head = await regs(qmp)
        await qmp.execute("replay-seek", {"icount": 1234})
        assert (await query(qmp))["icount"] == 1234
        assert (await query(qmp))["mode"] == "replay"
        at_1234 = await regs(qmp)
        await qmp.execute("replay-seek", {"icount": 300_000})
        assert await regs(qmp) == at_head
        await qmp.execute("replay-seek", {"icount": 1234})
        assert await regs(qmp) == at_1234
        await qmp.execute("replay-break", {"icount": 200_000})
        with qmp.listener(("STOP",)) as listener:
            await qmp.execute("cont")
            await asyncio.wait_for(listener.get(), 30)
        assert (await query(qmp))["icount"] == 200_000
        with pytest.raises(ExecuteError, match="outside the history"):
            await qmp.execute("replay-seek", {"icount": 10**9})
        text = str(await qmp.execute("human-monitor-command", {"command-line": "info replay"}))
        assert "Replay mode: icount 200000" in text
