"""PLIC (SiFive layout) with one context: hart 0 in machine mode.

Level-triggered sources through the standard gateway: a source becomes
pending while its line is high and it is not being serviced; completing it
re-samples the line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emud.device import MIGRATE_LATE, Device
from emud.irq import IRQ
from emud.vmstate import UINT32, UINT64, Field, VMStateDescription

# Register map
PRIORITY = 0x000000  # + 4 * source
PENDING = 0x001000  # bit array
ENABLE = 0x002000  # context 0 bit array
THRESHOLD = 0x200000  # context 0
CLAIM = 0x200004  # context 0: read claims, write completes

NUM_SOURCES = 64  # 1..63 usable; source 0 does not exist
PRIORITY_MASK = 7


class Plic(Device):
    name = "plic"
    description = "SiFive PLIC, 64 sources, one context (hart 0, M-mode)"
    mmio_size = 0x400000
    migrate_order = MIGRATE_LATE  # after its sources: their lines are restored first
    irq_outputs = 0

    def __init__(self, **props: object) -> None:
        super().__init__(**props)
        self.meip = IRQ("plic.meip")  # output: the hart's machine external interrupt
        self.inputs = [IRQ(f"plic.{n}", self._line_handler(n)) for n in range(NUM_SOURCES)]
        self.edges = [0] * NUM_SOURCES  # rising edges per source (`info irq`), never migrated
        self.priority = [0] * NUM_SOURCES
        self.pending = 0
        self.enable = 0
        self.threshold = 0
        self.claimed = 0

    def reset(self) -> None:
        self.priority = [0] * NUM_SOURCES
        self.pending = self.enable = self.threshold = self.claimed = 0
        for source, line in enumerate(self.inputs):  # re-sample levels that are still high
            if source and line.level:
                self.pending |= 1 << source
        self._update()

    def output_lines(self) -> dict[str, IRQ]:
        return {"meip": self.meip}

    def input_lines(self) -> dict[str, IRQ]:
        return {str(n): line for n, line in enumerate(self.inputs) if n}

    def interrupt_stats(self) -> list[int]:
        return list(self.edges)

    def _line_handler(self, source: int) -> Callable[[bool], None]:
        def handler(level: bool) -> None:
            if level:
                self.edges[source] += 1
            if source and level and not self.claimed >> source & 1:
                self.pending |= 1 << source
            elif source and not level:
                self.pending &= ~(1 << source)
            self._update()

        return handler

    def _best(self) -> int:
        """Highest-priority pending, enabled source above threshold (lowest id wins ties)."""
        best, best_prio = 0, self.threshold
        candidates = self.pending & self.enable & ~self.claimed
        for source in range(1, NUM_SOURCES):
            if candidates >> source & 1 and self.priority[source] > best_prio:
                best, best_prio = source, self.priority[source]
        return best

    def _update(self) -> None:
        self.meip.set(self._best() != 0)

    def peek(self, offset: int, size: int) -> int:
        if PRIORITY <= offset < PRIORITY + 4 * NUM_SOURCES:
            return self.priority[offset // 4]
        if PENDING <= offset < PENDING + NUM_SOURCES // 8:
            return (self.pending >> (8 * (offset - PENDING))) & 0xFFFF_FFFF
        if ENABLE <= offset < ENABLE + NUM_SOURCES // 8:
            return (self.enable >> (8 * (offset - ENABLE))) & 0xFFFF_FFFF
        if offset == THRESHOLD:
            return self.threshold
        if offset == CLAIM:
            return self._best()
        return 0

    def read(self, offset: int, size: int) -> int:
        if offset != CLAIM:
            return self.peek(offset, size)
        source = self._best()
        if source:
            self.pending &= ~(1 << source)
            self.claimed |= 1 << source
            self._update()
        return source

    def write(self, offset: int, value: int, size: int) -> None:
        if PRIORITY <= offset < PRIORITY + 4 * NUM_SOURCES:
            if offset:
                self.priority[offset // 4] = value & PRIORITY_MASK
        elif ENABLE <= offset < ENABLE + NUM_SOURCES // 8:
            shift = 8 * (offset - ENABLE)
            self.enable = (self.enable & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
            self.enable &= (1 << NUM_SOURCES) - 2  # no source 0; a misaligned write's excess
        elif offset == THRESHOLD:
            self.threshold = value & PRIORITY_MASK
        elif offset == CLAIM:
            source = value
            if 0 < source < NUM_SOURCES and self.claimed >> source & 1:
                self.claimed &= ~(1 << source)
                if self.inputs[source].level:
                    self.pending |= 1 << source
        self._update()

    # --- monitor --------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Context 0's threshold and MEIP, priorities set, and the sources by state."""
        def sources(mask: int) -> list[int]:
            return [s for s in range(NUM_SOURCES) if mask >> s & 1]

        levels = [s for s, line in enumerate(self.inputs) if s and line.level]
        return {"threshold": self.threshold, "meip": self.meip.level,
                "priority": {s: p for s, p in enumerate(self.priority) if p},
                "pending": sources(self.pending), "enabled": sources(self.enable),
                "claimed": sources(self.claimed), "level": levels}

    @classmethod
    def render_info(cls, data: dict[str, Any]) -> str:
        def show(sources: list[int]) -> str:
            return " ".join(map(str, sources)) or "-"

        prios = " ".join(f"{s}={p}" for s, p in data["priority"].items()) or "-"
        return "\n".join([
            f"{data.get('id', 'plic')}: context 0 (hart 0, M-mode) threshold "
            f"{data['threshold']} meip {int(data['meip'])}",
            f"  priority  {prios}", f"  level     {show(data['level'])}",
            f"  pending   {show(data['pending'])}", f"  enabled   {show(data['enabled'])}",
            f"  claimed   {show(data['claimed'])}"])

    # --- vmstate (emud's own section) ----------------------------------------------------

    @property
    def input_levels(self) -> int:
        return sum(1 << n for n, line in enumerate(self.inputs) if line.level)

    @input_levels.setter
    def input_levels(self, levels: int) -> None:
        # The sources' own state is restored with them; only remember what the wires carry.
        for n, line in enumerate(self.inputs):
            line.level = bool(levels >> n & 1)

    vmstate = VMStateDescription(
        "plic", 1, 1,
        [Field("priority", UINT32, num=NUM_SOURCES), Field("pending", UINT64),
         Field("enable", UINT64), Field("threshold", UINT32), Field("claimed", UINT64),
         Field("input_levels", UINT64)],
        loaded=lambda plic: plic._update(),
    )
