"""Assemble a small M/U program and run it on a bare hart (the U-mode and PMP tests).

A program is assembly placed at CODE by the GNU toolchain (labels, `la`, `.org`
work as usual); it ends by reaching the label `done`, where a `j .` spins.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emud.clock import VirtualClock
from emud.cpu.hart import Hart
from emud.cpu.translate import Translator
from emud.memory import AddressSpace, Ram

CODE = 0x8000_0000
RAM_SIZE = 64 * 1024
TOOLS = "riscv64-unknown-elf-"


@dataclass(frozen=True)
class Program:
    image: bytes
    symbols: dict[str, int]


@functools.cache
def assemble(source: str) -> Program:
    """Link an assembly program at CODE (fails, never skips, without the toolchain)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, elf, binary = (Path(tmp, n) for n in ("a.S", "a.o", "a.elf", "a.bin"))
        src.write_text(".globl _start\n_start:\n" + source + "\n")
        for cmd in (
            [TOOLS + "as", "-march=rv32imac_zicsr", "-mabi=ilp32", "-mno-relax",
             "-o", str(obj), str(src)],
            [TOOLS + "ld", "-m", "elf32lriscv", f"-Ttext={CODE:#x}", "-o", str(elf), str(obj)],
            [TOOLS + "objcopy", "-O", "binary", str(elf), str(binary)],
        ):
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stderr}\n{source}"
        nm = subprocess.run([TOOLS + "nm", str(elf)], capture_output=True, text=True, check=True)
        symbols = {name: int(value, 16) for value, _, name in
                   (line.split() for line in nm.stdout.splitlines() if line.count(" ") == 2)}
        return Program(binary.read_bytes(), symbols)


def make_hart(program: Program, translate: bool = False) -> Hart:
    hart = Hart(AddressSpace(Ram(CODE, RAM_SIZE)), VirtualClock())
    hart.bus.write_bytes(CODE, program.image)
    hart.reset(CODE)
    if translate:
        hart.accel = Translator(hart)
    return hart


def run_to(hart: Hart, program: Program, label: str = "done", budget: int = 20_000) -> Hart:
    """Run until pc reaches `label`, a `j .` (asserting it does within the budget)."""
    target = program.symbols[label]
    for _ in range(budget // 100):
        hart.run(100)
        if hart.pc == target:
            return hart
    raise AssertionError(f"pc={hart.pc:#x} never reached {label} ({target:#x}); "
                         f"mcause={hart.mcause:#x} mepc={hart.mepc:#x} mtval={hart.mtval:#x}")


# Assembly pieces of the M/U programs.  TRAP_VECTOR points mtvec at `trap`; USER_ALL gives
# U everything through PMP entry 15, so only the entries under test decide; HANDLER is
# `trap`: it records mcause/mepc/mtval/mstatus in s2..s5 and goes to `done`.
TRAP_VECTOR = """
    la t0, trap
    csrw mtvec, t0
"""
USER_ALL = """
    li t0, -1
    csrw pmpaddr15, t0
    li t0, 0x1f000000        # entry 15: NAPOT, RWX
    csrw pmpcfg3, t0
"""
PROLOGUE = TRAP_VECTOR + USER_ALL
HANDLER = """
.balign 4
trap:
    csrr s2, mcause
    csrr s3, mepc
    csrr s4, mtval
    csrr s5, mstatus
done:
    j done
"""


def enter_user(label: str = "user", mstatus_set: int = 0) -> str:
    """M-mode code that mrets to U at `label`, with `mstatus_set` set in mstatus first."""
    set_bits = f"    li t0, {mstatus_set}\n    csrs mstatus, t0\n" if mstatus_set else ""
    return f"""
    li t0, 0x1800
    csrc mstatus, t0         # MPP=U
{set_bits}    la t0, {label}
    csrw mepc, t0
    mret
"""


def to_user(body: str, mstatus_set: int = 0, *, setup: str = "", after: str = "") -> str:
    """A program that runs `setup` in M, drops to U-mode at `user` and runs `body` there;
    `after` follows the handler."""
    return (PROLOGUE + setup + enter_user("user", mstatus_set) + "user:\n" + body + "\n"
            + HANDLER + after)
