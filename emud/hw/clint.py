"""CLINT (SiFive-compatible core-local interruptor): msip, mtimecmp, mtime.

mtime counts at 10 MHz of virtual time (QEMU virt's timebase).
"""

from __future__ import annotations

from typing import Any

from emud.clock import NEVER
from emud.device import Device, DeviceContext
from emud.irq import IRQ
from emud.vmstate import INT64, UINT32, UINT64, Field, VMStateDescription

# Register map
MSIP = 0x0000
MTIMECMP = 0x4000  # 64-bit, hart 0
MTIME = 0xBFF8  # 64-bit

NS_PER_TICK = 100
ALL_ONES = (1 << 64) - 1


class Clint(Device):
    name = "clint"
    description = "SiFive CLINT: msip, mtimecmp, mtime at 10 MHz of virtual time"
    mmio_size = 0x10000
    irq_outputs = 0  # its lines go to the hart (board wires), not to the PLIC

    def __init__(self, **props: object) -> None:
        super().__init__(**props)
        self.msip_irq = IRQ("clint.msip")
        self.mtip_irq = IRQ("clint.mtip")
        self.msip = 0
        self.mtimecmp = ALL_ONES
        self.mtime_offset = 0  # mtime = now/100 + offset; software may write mtime
        self.edges = [0, 0]  # rising edges of msip and mtip, for `info irq` (not migrated)

    def do_realize(self, ctx: DeviceContext) -> None:
        self.clock = ctx.need_clock(self)
        self.timer = self.clock.timer(self._update_mtip)
        ctx.set_time_source(lambda: self.mtime)

    def output_lines(self) -> dict[str, IRQ]:
        return {"msip": self.msip_irq, "mtip": self.mtip_irq}

    def reset(self) -> None:
        self.msip = 0
        self.mtimecmp = ALL_ONES
        self.mtime_offset = 0
        self.msip_irq.set(False)
        self._update_mtip()

    @property
    def mtime(self) -> int:
        return (self.clock.now_ns // NS_PER_TICK + self.mtime_offset) & ALL_ONES

    def interrupt_stats(self) -> list[int]:
        """The CLINT has no inputs: it counts its own outputs rising, msip then mtip (the
        hart's MSI and MTI), so `info irq` shows the interrupts the hart gets from it."""
        return list(self.edges)

    def _set_line(self, n: int, irq: IRQ, level: bool) -> None:
        self.edges[n] += level and not irq.level
        irq.set(level)

    def _update_mtip(self) -> None:
        due = self.mtime >= self.mtimecmp
        self._set_line(1, self.mtip_irq, due)
        if due:
            self.timer.cancel()
            return
        now = self.clock.now_ns
        deadline = now - now % NS_PER_TICK + (self.mtimecmp - self.mtime) * NS_PER_TICK
        if deadline < NEVER:
            self.timer.modify(deadline)
        else:  # beyond the end of virtual time (mtimecmp = all ones): never
            self.timer.cancel()

    def _reg64(self, offset: int, base: int, size: int) -> tuple[int, int]:
        """(shift, mask) of a 32- or 64-bit access within a 64-bit register."""
        shift = 8 * (offset - base)
        return shift, ((1 << (8 * size)) - 1) << shift & ALL_ONES  # an 8-byte access at +4

    def peek(self, offset: int, size: int) -> int:
        if offset == MSIP:
            return self.msip
        for base, value in ((MTIMECMP, self.mtimecmp), (MTIME, self.mtime)):
            if base <= offset < base + 8:
                return value >> (8 * (offset - base))
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        if offset == MSIP:
            self.msip = value & 1
            self._set_line(0, self.msip_irq, bool(self.msip))
        elif MTIMECMP <= offset < MTIMECMP + 8:
            shift, mask = self._reg64(offset, MTIMECMP, size)
            self.mtimecmp = (self.mtimecmp & ~mask) | ((value << shift) & mask)
            self._update_mtip()
        elif MTIME <= offset < MTIME + 8:
            shift, mask = self._reg64(offset, MTIME, size)
            new = (self.mtime & ~mask) | ((value << shift) & mask)
            offset = (new - self.clock.now_ns // NS_PER_TICK) & ALL_ONES  # mtime wraps
            self.mtime_offset = offset - (1 << 64) if offset >> 63 else offset  # int64
            self._update_mtip()

    def info(self) -> dict[str, Any]:
        return {"msip": self.msip, "mtime": self.mtime, "mtimecmp": self.mtimecmp,
                "mtip": self.mtip_irq.level}

    def _loaded(self) -> None:
        self.msip_irq.set(bool(self.msip))
        self._update_mtip()

    # --- vmstate (emud's own section: QEMU's aclint has another layout) ---------------

    vmstate = VMStateDescription(
        "clint", 1, 1,
        [Field("msip", UINT32), Field("mtimecmp", UINT64), Field("mtime_offset", INT64)],
        loaded=lambda clint: clint._loaded(),
    )
