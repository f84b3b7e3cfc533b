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
