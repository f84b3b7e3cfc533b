"""The example GPIO plug-in seen by the real gdb-multiarch: its window is in gdb's memory
map, gdb reads its registers, and a watchpoint on one stops the guest."""

from __future__ import annotations

import re
from pathlib import Path

from test_examples_gpio import BASE, DATA_OUT, DIR, GUEST, PINS, daemon
from test_gdb_e2e import Gdb
from test_qmp_cli import tcp


async def test_gdb_maps_and_watches_its_registers(tmp_path: Path) -> None:
    async with daemon(tmp_path, "--gdb", "tcp:127.0.0.1:0", banners=2) as (_, banner):
        port = tcp(banner["gdb"])[1]
        gdb = await Gdb.start(GUEST)
        try:
            await gdb.cmd(f"-target-select remote 127.0.0.1:{port}")
            await gdb.stopped()
            regions = await gdb.console("info mem")
            assert re.search(r"0x10012000\s+0x10013000\s+rw", regions), regions
            assert await gdb.value(f"*(unsigned int *){BASE + PINS:#x}") == "8"
            await gdb.console(f"watch *(unsigned int *){BASE + DATA_OUT:#x}")
            stop = await gdb.resume()
            assert stop["reason"] == "watchpoint-trigger", stop
            assert stop["value"]["new"] == "5"  # guest.c's first DATA_OUT store
            assert await gdb.value(f"*(unsigned int *){BASE + DIR:#x}") == "15"
        finally:
            await gdb.close()
