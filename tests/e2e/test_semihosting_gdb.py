"""The real gdb-multiarch on a semihosting guest: its breakpoints and the guest's ebreak calls
coexist (gdb's breakpoints never write ebreak into guest memory)."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from test_gdb_e2e import TIMEOUT, Gdb

from conftest import IMAGES, ROOT
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
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(HELLO), "-S", "--gdb", "tcp:127.0.0.1:0",
        "--semihosting", "--semihosting-console", f"file:{console}", "-serial", "null",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    gdb = await Gdb.start(HELLO)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        match = re.search(rb"listening on tcp:127\.0\.0\.1:(\d+)", line)
        assert match, line
        await gdb.cmd(f"-target-select remote 127.0.0.1:{int(match.group(1))}")
        await gdb.stopped()
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
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), TIMEOUT)
