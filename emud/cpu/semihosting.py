"""The CPU side of RISC-V semihosting: spotting the call sequence at an ebreak.

A semihosting call is an uncompressed `ebreak` between `slli x0, x0, 0x1f` and
`srai x0, x0, 7`.  The hart only recognises the sequence and hands the call to
the handler object the machine gave it; what the call does on the host lives
outside the CPU package (emud/semihosting.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from emud.cpu.csr import PRV_M

if TYPE_CHECKING:
    from emud.cpu.hart import Hart

ENTRY_NOP = 0x01F0_1013  # slli x0, x0, 0x1f
EXIT_NOP = 0x4070_5013  # srai x0, x0, 7


class SemihostingHandler(Protocol):
    def call(self, hart: Hart) -> bool:
        """Perform the call in a0/a1, result in a0.  False: it cannot complete yet (a
        console read with no input); the handler has set `hart.waiting` and the
        ebreak runs again when the hart wakes."""
        ...


def _word(hart: Hart, addr: int) -> int | None:
    ram = hart.bus.ram
    if not ram.contains(addr, 4) or addr & 1:
        return None
    return int.from_bytes(ram.data[addr - ram.base:addr - ram.base + 4], "little")


def is_call(hart: Hart, pc: int) -> bool:
    """Whether the 4-byte ebreak at pc is a semihosting call (from M-mode, as QEMU
    allows by default; a U-mode one stays a breakpoint exception).

    The neighbours are read when the ebreak runs, not when it is decoded: they may
    sit on another page than the ebreak, whose rewrite would not drop its op.
    """
    return (hart.priv == PRV_M and _word(hart, pc - 4) == ENTRY_NOP
            and _word(hart, pc + 4) == EXIT_NOP)
