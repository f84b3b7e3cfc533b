"""The real gdb-multiarch on a semihosting guest: its breakpoints and the guest's ebreak calls
coexist (gdb's breakpoints never write ebreak into guest memory)."""

from __future__ import annotations

from pathlib import Path

from test_gdb_e2e import Emud, Gdb

from conftest import IMAGES
from emud.loader import load_elf

HELLO = IMAGES / "semihost_hello.elf"
TEXT = "hello from semihosting, 2 + 3 = 5\nputs works too\nand stderr\n"
EBREAK = (0x0010_0073).to_bytes(4, "little")


def semihosting_ebreak() -> int:
    """The ebreak of picolibc's sys_semihost (the one place the calls are made)."""
    image = load_elf(HELLO)
    start = image.symbols["sys_semihost"]
    for seg in image.segments:
        if seg.addr <= start < seg.addr + len(seg.data):
            code = seg.data[start - seg.addr:start - seg.addr + 64]
            return start + code.index(EBREAK)
    raise AssertionError("sys_semihost is not in a loaded segment")


async def test_gdb_breakpoints_on_semihosting_calls(tmp_path: Path) -> None:
    console = tmp_path / "console.txt"
    emud = await Emud.start(HELLO, tmp_path / "uart.txt", "--semihosting",
                            "--semihosting-console", f"file:{console}")
    gdb = await Gdb.start(HELLO)
    try:
        await emud.attach(gdb)
        ebreak = semihosting_ebreak()
        await gdb.cmd("-break-insert sys_semihost")
        await gdb.cmd(f"-break-insert *{ebreak:#x}")
        stop = await gdb.resume()
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "sys_semihost"
        stop = await gdb.resume()  # the ebreak itself: gdb stops before the call
        assert int(stop["frame"]["addr"], 16) == ebreak
        await gdb.cmd("-break-delete")
        stop = await gdb.resume()  # the calls run: text, then SYS_EXIT_EXTENDED with 7
        assert stop == {"reason": "exited", "exit-code": "07"}
        assert console.read_text() == TEXT
    finally:
        await gdb.close()
        await emud.stop()  # the guest's exit ended neither the daemon nor its gdb server
