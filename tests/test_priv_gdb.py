"""gdb's $priv (org.gnu.gdb.riscv.virtual) with the real gdb-multiarch on the utasks guest."""

from __future__ import annotations

from pathlib import Path

from e2e.test_gdb_e2e import Emud, Gdb

from conftest import IMAGES

UTASKS = IMAGES / "utasks.elf"


async def test_priv_shows_and_sets_the_privilege_level(tmp_path: Path) -> None:
    emud = await Emud.start(UTASKS, tmp_path / "uart.txt")
    gdb = await Gdb.start(UTASKS)
    try:
        await emud.attach(gdb)
        assert await gdb.value("$priv") == "3"  # reset: M-mode
        await gdb.cmd("-break-insert worker")
        stop = await gdb.resume()
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "worker"
        assert await gdb.value("$priv") == "0"  # a task: U-mode
        await gdb.cmd("-break-delete")
        await gdb.cmd("-break-insert ukernel_trap")
        stop = await gdb.resume()
        assert stop["frame"]["func"] == "ukernel_trap"
        assert await gdb.value("$priv") == "3"  # the kernel's trap handler
        await gdb.cmd('-data-evaluate-expression "$priv = 0"')
        assert await gdb.value("$priv") == "0"  # writing it changes the privilege
        await gdb.cmd('-data-evaluate-expression "$priv = 3"')
        assert await gdb.value("$priv") == "3"
    finally:
        await gdb.close()
        await emud.stop()
