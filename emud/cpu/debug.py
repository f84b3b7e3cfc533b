"""Debugger breakpoints and watchpoints as the hart sees them.

Both stop the hart *before* the instruction has any effect: a `DebugStop`
leaves the instruction like a Trap would, and the run loop then returns with
pc at that instruction and `hart.debug_stop` saying why.  Resuming runs that
instruction once without the checks, so a stop never repeats in place.
"""

from __future__ import annotations

from dataclasses import dataclass

BREAK = "break"
# Watchpoint kinds, named as in gdb's stop replies.
WATCH, RWATCH, AWATCH = "watch", "rwatch", "awatch"


class DebugStop(Exception):
    """Raised by a breakpoint's op or a watched access; `pc` is filled in by the run loop."""

    def __init__(self, kind: str, addr: int) -> None:
        super().__init__(kind, addr)
        self.kind = kind
        self.addr = addr  # the breakpoint's pc, or the first watched byte accessed
        self.pc = 0


@dataclass(frozen=True)
class Watchpoint:
    addr: int
    length: int
    kind: str  # WATCH (stores), RWATCH (loads) or AWATCH (both)

    @property
    def reads(self) -> bool:
        return self.kind != WATCH

    @property
    def writes(self) -> bool:
        return self.kind != RWATCH

    def check(self, addr: int, size: int, write: bool) -> None:
        if ((self.writes if write else self.reads)
                and addr < self.addr + self.length and self.addr < addr + size):
            raise DebugStop(self.kind, max(addr, self.addr))
