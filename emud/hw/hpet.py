"""HPET (IA-PC High Precision Event Timer), following QEMU's newest C model (docs/hpet.md).

The counter runs at QEMU's 100 MHz (10 ns per tick) on the virtual clock.  Each
section of the spec marked "new" is what this model does; the docstrings note
where Debian's QEMU 7.2 behaves differently.

Output lines.  QEMU's device raises its output 0 for ISA IRQ 0 (legacy timer 0,
the PIT input) and output 8 for the RTC (legacy timer 1, the RTC input).  On the
pc the IOAPIC delivers ISA IRQ 0 on pin 2 (interrupt source override), and that is
what a guest sees.  emud-virt has no IOAPIC, so this model delivers ISA IRQ 0 on
line 2 itself: legacy timer 0, the forwarded PIT input and the lowering QEMU does
on LEG_RT changes all use line 2 (PLIC source 34).  A timer whose Tn_INT_ROUTE is n
uses line n (PLIC source 32 + n), 0 included.  In a qtest trace of QEMU (IOAPIC
intercepted) the legacy timer 0 shows as `IRQ raise 0`; here it is line 2.

Legacy inputs.  emud-virt has no PIT or RTC; the inputs `pit_in` and `rtc_in`
exist (nothing drives them on the board) so the legacy gating and the migrated
`rtc_irq_level` behave as in QEMU.  `pit_enabled` is an unconnected output.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from emud import trace
from emud.device import Device, DeviceContext, prop_bool, prop_uint
from emud.irq import IRQ
from emud.vmstate import (
    TIMER,
    UINT8,
    UINT64,
    Field,
    State,
    Subsection,
    Validate,
    VMStateDescription,
)

# --- register map -----------------------------------------------------------------


class Reg(IntEnum):
    """Global registers (64-bit; bit 2 of the address selects the high half)."""

    ID = 0x000  # General Capabilities and ID (high half: counter period in fs)
    CFG = 0x010  # General Configuration
    STATUS = 0x020  # General Interrupt Status (write 1 to clear)
    COUNTER = 0x0F0  # Main Counter Value


TIMER_BASE = 0x100  # timer N's block is at 0x100 + 0x20 * N
TIMER_STRIDE = 0x20


class TimerReg(IntEnum):
    CFG = 0x00  # Tn_CONF_CAP (high half: Tn_INT_ROUTE_CAP)
    CMP = 0x08  # Tn_COMPARATOR
    ROUTE = 0x10  # Tn_FSB_ROUTE: value (low), address (high)


MMIO_SIZE = 0x400

# General Configuration bits
CFG_ENABLE = 1 << 0
CFG_LEGACY = 1 << 1
CFG_WRITE_MASK = 0x3

# Timer configuration bits
TN_TYPE_LEVEL = 1 << 1
TN_ENABLE = 1 << 2  # Tn_INT_ENB_CNF
TN_PERIODIC = 1 << 3
TN_PERIODIC_CAP = 1 << 4
TN_SIZE_CAP = 1 << 5
TN_SETVAL = 1 << 6
TN_32BIT = 1 << 8
TN_INT_ROUTE_SHIFT = 9
TN_INT_ROUTE_MASK = 0x1F << TN_INT_ROUTE_SHIFT
TN_FSB_ENABLE = 1 << 14
TN_FSB_CAP = 1 << 15
TN_CFG_WRITE_MASK = 0x7F4E

NS_PER_TICK = 10  # QEMU's HPET runs at 100 MHz
CLK_PERIOD_FS = 10_000_000
CAPABILITY_BASE = 0x8086A001  # rev 1, 64-bit counter, legacy capable, vendor 0x8086
MIN_TIMERS, MAX_TIMERS = 3, 32
NUM_OUTPUTS = 32
DEFAULT_INTCAP = 0x00FF0104  # lines 2, 8, 16-23, as QEMU's pc-q35

ISA_IRQ0_LINE = 2  # where the pc's IOAPIC delivers ISA IRQ 0 (module docstring)
RTC_ISA_IRQ = 8
LEGACY_LINES = (ISA_IRQ0_LINE, RTC_ISA_IRQ)  # legacy replacement: timer 0, timer 1

M32 = (1 << 32) - 1
M64 = (1 << 64) - 1
NANOSECONDS_PER_SECOND = 1_000_000_000
MIN_PERIODIC_NS = 1000  # "avoid timer storms": periodic re-arm at least 1 us apart

# --- trace points (hw/timer/trace-events) -----------------------------------------

trace_timer_id_out_of_range = trace.event("hpet_timer_id_out_of_range",
                                          "timer id out of range: 0x%x")
trace_ram_read = trace.event("hpet_ram_read", "enter hpet_ram_readl at 0x%x")
trace_ram_read_reading_counter = trace.event("hpet_ram_read_reading_counter",
                                             "reading counter + %u = 0x%x")
trace_ram_read_invalid = trace.event("hpet_ram_read_invalid", "invalid hpet_ram_readl")
trace_ram_write = trace.event("hpet_ram_write", "enter hpet_ram_writel at 0x%x = 0x%x")
trace_ram_write_timer_id = trace.event("hpet_ram_write_timer_id",
                                       "hpet_ram_writel timer_id = %u")
trace_ram_write_tn_cfg = trace.event("hpet_ram_write_tn_cfg", "hpet_ram_writel HPET_TN_CFG + %u")
trace_ram_write_tn_cmp = trace.event("hpet_ram_write_tn_cmp", "hpet_ram_writel HPET_TN_CMP + %u")
trace_ram_write_invalid_tn_cmp = trace.event("hpet_ram_write_invalid_tn_cmp",
                                             "invalid HPET_TN_CMP + 4 write")
trace_ram_write_invalid = trace.event("hpet_ram_write_invalid", "invalid hpet_ram_writel")
trace_ram_write_counter_write_while_enabled = trace.event(
    "hpet_ram_write_counter_write_while_enabled", "Writing counter while HPET enabled!")


def _signed64(value: int) -> int:
    value &= M64
    return value - (1 << 64) if value >> 63 else value


def _deposit(old: int, shift: int, length: int, value: int) -> int:
    mask = ((1 << length) - 1) << shift
    return (old & ~mask) | ((value << shift) & mask)


def _fixup(new: int, old: int, mask: int) -> int:
    """Only the bits in `mask` are writable."""
    return (new & mask) | (old & ~mask)


def catch_up(cmp64: int, cur: int, period: int) -> int:
    """QEMU's `while (hpet_time_after(cur, cmp64)) cmp64 += period;` in closed form."""
    diff = (cmp64 - cur) & M64
    if diff < 1 << 63:  # cmp64 is not before cur (signed comparison)
        return cmp64
    if period < 1 << 63:  # climb until the difference wraps back into [0, 2^63)
        steps = -(-((1 << 64) - diff) // period)
    else:  # adding a period this large steps back by 2^64 - period
        back = (1 << 64) - period
        steps = -(-(diff - ((1 << 63) - 1)) // back)
    return (cmp64 + steps * period) & M64


# --- state ------------------------------------------------------------------------


class HPETTimer:
    """One comparator.  `cmp64` and `last` are QEMU's hidden, unmigrated state."""

    def __init__(self, hpet: HPET, tn: int) -> None:
        self.hpet = hpet
        self.tn = tn
        self.config = 0
        self.cmp = 0
        self.fsb = 0
        self.period = 0  # last value written to the comparator in periodic mode
        self.wrap_flag = 0
        self.cmp64 = 0  # comparator extended to the counter's width
        self.last = 0  # ns of the last arming (periodic anti-storm clamp)
        self.qemu_timer = hpet.clock.timer(lambda: hpet._expired(self))

    @property
    def periodic(self) -> bool:
        return bool(self.config & TN_PERIODIC)

    @property
    def mode32(self) -> bool:
        return bool(self.config & TN_32BIT)

    @property
    def route(self) -> int:
        """Output line: legacy replacement for timers 0 and 1, else Tn_INT_ROUTE."""
        if self.tn <= 1 and self.hpet.config & CFG_LEGACY:
            return LEGACY_LINES[self.tn]
        return (self.config & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT


class HPET(Device):
    name = "hpet"
    description = "HPET, 3..32 timers, 100 MHz counter, optional FSB (MSI) delivery"
    mmio_size = MMIO_SIZE
    quiet_reads = True  # a read only logs and traces (the counter is computed from time)
    irq_outputs = NUM_OUTPUTS
    trace_events = tuple(trace.events("hpet_*"))  # every event this module declared above

    num_timers = prop_uint(8, 3, name="timers", minimum=MIN_TIMERS, maximum=MAX_TIMERS,
                           doc="number of implemented timers")
    msi = prop_bool(False, doc="timers are FSB (MSI) capable")
    intcap = prop_uint(32, DEFAULT_INTCAP, name="hpet-intcap",
                       check=lambda v: None if v else "must be non-zero (QEMU: "
                       "hpet.hpet-intcap not initialized)",
                       doc="Tn_INT_ROUTE_CAP: the lines a timer may be routed to")
    offset_saved = prop_bool(True, name="hpet-offset-saved",
                             doc="migrate the counter offset (false on machine types <= 2.11)")

    def __init__(self, **props: Any) -> None:
        super().__init__(**props)
        self.irqs = [IRQ(f"hpet.{n}") for n in range(NUM_OUTPUTS)]
        self.pit_enabled = IRQ("hpet.pit_enabled")
        self.pit_in = IRQ("hpet.pit_in", self._pit_input)
        self.rtc_in = IRQ("hpet.rtc_in", self._rtc_input)
        self.inputs = [self.pit_in, self.rtc_in]  # QEMU's unnamed GPIO inputs 0 and 1
        self.timers: list[HPETTimer] = []
        self.fsb_write: Callable[[int, int], None] | None = None
        self.capability = 0
        self.config = 0
        self.isr = 0
        self.hpet_counter = 0  # the counter while disabled (and as last saved)
        self.hpet_offset = 0  # ns: counter ticks = (now + offset) / 10 while enabled
        self.rtc_irq_level = 0
        self.num_timers_save = 0

    def do_realize(self, ctx: DeviceContext) -> None:
        """The timers run on the machine's clock; FSB (MSI) messages are 32-bit DMA
        stores on its bus (`ctx.dma_write`)."""
        self.clock = ctx.need_clock(self)
        dma = ctx.dma_write
        self.fsb_write = lambda addr, value: dma(addr, value, 4)
        self.timers = [HPETTimer(self, n) for n in range(MAX_TIMERS)]
        self.capability = (CAPABILITY_BASE | ((self.num_timers - 1) << 8)
                           | (CLK_PERIOD_FS << 32))

    def output_lines(self) -> dict[str, IRQ]:
        """Lines 0..31 (what `irq = N` wires to N..N+31), then `pit_enabled`."""
        lines = {str(n): irq for n, irq in enumerate(self.irqs)}
        return lines | {"pit_enabled": self.pit_enabled}

    def input_lines(self) -> dict[str, IRQ]:
        return {"pit": self.pit_in, "rtc": self.rtc_in}

    def reset(self) -> None:
        # Newest QEMU: stopping a timer re-delivers a pending status first, while the old
        # configuration is still in place, so a level ISR bit survives reset (7.2 clears it).
        for t in self.timers[:self.num_timers]:
            self._del_timer(t)
            t.cmp = M64
            t.config = (TN_PERIODIC_CAP | TN_SIZE_CAP | (TN_FSB_CAP if self.msi else 0)
                        | (self.intcap << 32))
            t.period = 0
            t.wrap_flag = 0
        self.pit_enabled.raise_()
        self.hpet_counter = 0
        self.hpet_offset = 0
        self.config = 0
        self.rtc_irq_level = 0

    # --- time -----------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.config & CFG_ENABLE)

    @property
    def legacy(self) -> bool:
        return bool(self.config & CFG_LEGACY)

    def ticks(self) -> int:
        """The main counter as a guest reads it now."""
        if not self.enabled:
            return self.hpet_counter
        return ((self.clock.now_ns + self.hpet_offset) & M64) // NS_PER_TICK

    def _running_ticks(self) -> int:
        return ((self.clock.now_ns + self.hpet_offset) & M64) // NS_PER_TICK

    def _tick_ns(self, tick: int) -> int:
        return (tick * NS_PER_TICK - self.hpet_offset) & M64

    # --- timers ---------------------------------------------------------------------

    @staticmethod
    def _cmp64(t: HPETTimer, cur: int, target: int) -> int:
        """The comparator as an absolute 64-bit tick (32-bit mode: the next match)."""
        if not t.mode32:
            return target
        result = (cur & ~M32) | (target & M32)
        if result < cur:
            result += 1 << 32
        return result & M64

    def _arm(self, t: HPETTimer, tick: int) -> None:
        ns = self._tick_ns(tick)
        if t.periodic and (ns - t.last) & M64 < MIN_PERIODIC_NS:
            ns = (t.last + MIN_PERIODIC_NS) & M64
        t.last = ns
        t.qemu_timer.modify(max(0, _signed64(ns)))  # timer_mod clamps negative deadlines

    def _set_timer(self, t: HPETTimer) -> None:
        cur = self._running_ticks()
        t.wrap_flag = 0
        t.cmp64 = self._cmp64(t, cur, t.cmp)
        if t.mode32 and not t.periodic:
            # 32-bit one-shot: also interrupt when the counter wraps
            next_wrap = (cur | M32) + 1
            if t.cmp64 > next_wrap:
                t.wrap_flag = 1
                self._arm(t, next_wrap)
                return
        self._arm(t, t.cmp64)

    def _del_timer(self, t: HPETTimer) -> None:
        t.qemu_timer.cancel()
        if self.isr >> t.tn & 1:
            self._update_irq(t, True)  # a level status stays set; the line goes low

    def _expired(self, t: HPETTimer) -> None:
        if t.periodic and t.period:
            t.cmp64 = catch_up(t.cmp64, self._running_ticks(), t.period)
            t.cmp = t.cmp64 & M32 if t.mode32 else t.cmp64
            self._arm(t, t.cmp64)
        elif t.wrap_flag:
            t.wrap_flag = 0
            self._arm(t, t.cmp64)
        self._update_irq(t, True)

    # --- interrupts -----------------------------------------------------------------

    def _update_irq(self, t: HPETTimer, set_: bool) -> None:
        line = t.route
        mask = 1 << t.tn
        level = bool(t.config & TN_TYPE_LEVEL)
        if set_ and level:
            self.isr |= mask
        else:
            self.isr &= ~mask
        fsb = bool(t.config & TN_FSB_ENABLE)
        if set_ and t.config & TN_ENABLE and self.enabled:
            if fsb:
                if self.fsb_write is not None:
                    self.fsb_write(t.fsb >> 32, t.fsb & M32)
            elif level:
                self.irqs[line].raise_()
            else:
                self.irqs[line].pulse()
        elif not fsb:
            self.irqs[line].lower()

    def _pit_input(self, level: bool) -> None:
        if not self.legacy:
            self.irqs[ISA_IRQ0_LINE].set(level)

    def _rtc_input(self, level: bool) -> None:
        self.rtc_irq_level = int(level)
        if not self.legacy:
            self.irqs[RTC_ISA_IRQ].set(level)

    def _resync_lines(self) -> None:
        """Drive every output to the level the state implies (after a load)."""
        levels = [False] * NUM_OUTPUTS
        if not self.legacy:  # the PIT's level is its own state; the RTC's is migrated here
            levels[ISA_IRQ0_LINE] = self.pit_in.level
            levels[RTC_ISA_IRQ] = bool(self.rtc_irq_level)
        for t in self.timers[:self.num_timers]:
            if (self.isr >> t.tn & 1 and t.config & TN_ENABLE and self.enabled
                    and not t.config & TN_FSB_ENABLE):
                levels[t.route] = True
        for irq, level in zip(self.irqs, levels, strict=True):
            irq.set(level)
        self.pit_enabled.set(not self.legacy)

    # --- MMIO -----------------------------------------------------------------------

    def _register(self, addr: int) -> int:
        """The 64-bit register at an 8-byte aligned offset (no side effects)."""
        if addr < TIMER_BASE:
            match addr:
                case Reg.ID:
                    return self.capability
                case Reg.CFG:
                    return self.config
                case Reg.STATUS:
                    return self.isr
                case Reg.COUNTER:
                    return self.ticks()
            return 0
        timer_id = (addr - TIMER_BASE) // TIMER_STRIDE
        if timer_id > self.num_timers:  # QEMU's off-by-one: timer num_timers is reachable
            return 0
        t = self.timers[timer_id]
        match addr & 0x18:
            case TimerReg.CFG:
                return t.config
            case TimerReg.CMP:
                return t.cmp
            case TimerReg.ROUTE:
                return t.fsb
        return 0

    def peek(self, offset: int, size: int) -> int:
        """Any size and alignment, for debuggers; the guest goes through `read`."""
        value = self._register(offset & ~7) >> (8 * (offset & 7))
        return value & ((1 << (8 * size)) - 1)

    @staticmethod
    def _access_ok(offset: int, size: int) -> bool:
        # MemoryRegionOps valid 4..8, aligned: QEMU's memory core drops anything else
        return size in (4, 8) and offset % size == 0 and 0 <= offset < MMIO_SIZE

    def read(self, offset: int, size: int) -> int:
        if not self._access_ok(offset, size):
            self.ctx.guest_error(f"{size}-byte read at offset 0x{offset:03x} dropped "
                                 "(the registers take aligned 4- or 8-byte accesses)")
            return 0
        trace_ram_read(offset)
        addr = offset & ~4
        value = self._register(addr)
        if addr < TIMER_BASE:
            if addr == Reg.COUNTER:
                trace_ram_read_reading_counter(offset & 4, value)
            elif addr not in (Reg.ID, Reg.CFG, Reg.STATUS):
                trace_ram_read_invalid()
                self._bad_register("read", offset)
        elif (addr - TIMER_BASE) // TIMER_STRIDE > self.num_timers:
            trace_timer_id_out_of_range((addr - TIMER_BASE) // TIMER_STRIDE)
            self._bad_timer("read", offset)
        elif addr & 0x18 == 0x18:
            trace_ram_read_invalid()
            self._bad_register("read", offset)
        return (value >> (8 * (offset & 4))) & ((1 << (8 * size)) - 1)

    def _bad_register(self, access: str, offset: int, value: int | None = None) -> None:
        data = "" if value is None else f" of 0x{value:x}"
        self.ctx.guest_error(f"{access}{data} at offset 0x{offset:03x}: no register there")

    def _bad_timer(self, access: str, offset: int) -> None:
        timer_id = ((offset & ~4) - TIMER_BASE) // TIMER_STRIDE
        self.ctx.guest_error(f"{access} at offset 0x{offset:03x}: timer {timer_id} does "
                             f"not exist (the HPET has {self.num_timers})")

    def write(self, offset: int, value: int, size: int) -> None:
        if not self._access_ok(offset, size):
            self.ctx.guest_error(f"{size}-byte write of 0x{value:x} at offset "
                                 f"0x{offset:03x} dropped (the registers take aligned 4- or "
                                 "8-byte accesses)")
            return
        trace_ram_write(offset, value)
        shift = (offset & 4) * 8
        length = min(size * 8, 64 - shift)
        addr = offset & ~4
        if addr < TIMER_BASE:
            match addr:
                case Reg.ID:
                    self.ctx.guest_error(f"write of 0x{value:x} to the read-only "
                                         f"capabilities register (offset 0x{offset:03x})")
                case Reg.CFG:
                    self._write_config(_deposit(self.config, shift, length, value))
                case Reg.STATUS:
                    cleared = (value << shift) & self.isr
                    for t in self.timers[:self.num_timers]:
                        if cleared >> t.tn & 1:
                            self._update_irq(t, False)
                case Reg.COUNTER:
                    if self.enabled:
                        trace_ram_write_counter_write_while_enabled()
                        self.ctx.guest_error(f"main counter written (0x{value:x}) while "
                                             "the HPET is enabled")
                    self.hpet_counter = _deposit(self.hpet_counter, shift, length, value)
                case _:
                    trace_ram_write_invalid()
                    self._bad_register("write", offset, value)
            return
        timer_id = (addr - TIMER_BASE) // TIMER_STRIDE
        trace_ram_write_timer_id(timer_id)
        if timer_id > self.num_timers:
            trace_timer_id_out_of_range(timer_id)
            self._bad_timer("write", offset)
            return
        t = self.timers[timer_id]
        match addr & 0x18:
            case TimerReg.CFG:
                trace_ram_write_tn_cfg(offset & 4)
                self._write_timer_config(t, _deposit(t.config, shift, length, value))
            case TimerReg.CMP:
                self._write_comparator(t, shift, length, value)
            case TimerReg.ROUTE:
                t.fsb = _deposit(t.fsb, shift, length, value)
            case _:
                trace_ram_write_invalid()
                self._bad_register("write", offset, value)

    def _write_config(self, written: int) -> None:
        old = self.config
        new = self.config = _fixup(written, old, CFG_WRITE_MASK)
        implemented = self.timers[:self.num_timers]
        if not old & CFG_ENABLE and new & CFG_ENABLE:
            # the counter continues from its stored value
            self.hpet_offset = (self.hpet_counter * NS_PER_TICK - self.clock.now_ns) & M64
            for t in implemented:
                if t.config & TN_ENABLE and self.isr >> t.tn & 1:
                    self._update_irq(t, True)
                self._set_timer(t)  # 7.2 arms only timers whose cmp is not all-ones
        elif old & CFG_ENABLE and not new & CFG_ENABLE:
            self.hpet_counter = self._running_ticks()
            for t in implemented:
                self._del_timer(t)  # 7.2 also clears the ISR bits here
        if not old & CFG_LEGACY and new & CFG_LEGACY:
            self.pit_enabled.lower()
            self.irqs[ISA_IRQ0_LINE].lower()
            self.irqs[RTC_ISA_IRQ].lower()
        elif old & CFG_LEGACY and not new & CFG_LEGACY:
            self.irqs[ISA_IRQ0_LINE].lower()
            self.pit_enabled.raise_()
            self.irqs[RTC_ISA_IRQ].set(bool(self.rtc_irq_level))

    def _write_timer_config(self, t: HPETTimer, written: int) -> None:
        old = t.config
        new = _fixup(written, old, TN_CFG_WRITE_MASK)
        if old & TN_TYPE_LEVEL and not new & TN_TYPE_LEVEL:
            self._update_irq(t, False)  # level -> edge: before the store, so FSB_EN is old
        t.config = new
        if not old & TN_ENABLE and new & TN_ENABLE and self.isr >> t.tn & 1:
            self._update_irq(t, True)  # re-raise a pending level interrupt
        if new & TN_32BIT:
            t.cmp &= M32
            t.period &= M32
        if self.enabled:
            self._set_timer(t)  # newest QEMU re-arms on every config write

    def _write_comparator(self, t: HPETTimer, shift: int, length: int, value: int) -> None:
        if t.mode32:
            if shift:  # only this event, as newest QEMU (C and Rust) traces it
                trace_ram_write_invalid_tn_cmp()  # 7.2 stores the high half anyway
                return
            length = 64
            value &= M32
        trace_ram_write_tn_cmp(shift >> 3)  # the address bit 2, like QEMU's `addr & 4`
        if not t.periodic or t.config & TN_SETVAL:
            t.cmp = _deposit(t.cmp, shift, length, value)
        if t.periodic:
            t.period = _deposit(t.period, shift, length, value)
        t.config &= ~TN_SETVAL
        if self.enabled:
            self._set_timer(t)

    # --- monitor --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        timers = []
        for t in self.timers[:self.num_timers]:
            fsb = bool(t.config & TN_FSB_ENABLE)
            timers.append({
                "index": t.tn,
                "config": t.config,
                "mode": "periodic" if t.periodic else "one-shot",
                "size": 32 if t.mode32 else 64,
                "trigger": "level" if t.config & TN_TYPE_LEVEL else "edge",
                "int_enabled": bool(t.config & TN_ENABLE),
                "comparator": t.cmp,
                "period": t.period,
                "delivery": "fsb" if fsb else "line",
                "route": None if fsb else t.route,
                "plic_source": None if fsb else 32 + t.route,
                "fsb_address": t.fsb >> 32,
                "fsb_value": t.fsb & M32,
                "status": bool(self.isr >> t.tn & 1),
                "deadline_ns": t.qemu_timer.expire_time if t.qemu_timer.pending else None,
            })
        return {
            "num_timers": self.num_timers,
            "capability": self.capability,
            "enabled": self.enabled,
            "legacy": self.legacy,
            "counter": self.ticks(),
            "offset_ns": self.hpet_offset,
            "isr": self.isr,
            "intcap": self.intcap,
            "msi": self.msi,
            "rtc_irq_level": self.rtc_irq_level,
            "now_ns": self.clock.now_ns,
            "timers": timers,
        }

    @classmethod
    def render_info(cls, data: dict[str, Any]) -> str:
        return "\n".join(_hpet_lines(data))

    # --- vmstate --------------------------------------------------------------------

    def _pre_save(self) -> None:
        if self.enabled:
            self.hpet_counter = self._running_ticks()
        self.num_timers_save = self.num_timers

    def _loaded(self) -> None:
        now = self.clock.now_ns
        for t in self.timers[:self.num_timers]:
            t.cmp64 = self._cmp64(t, self.hpet_counter, t.cmp)
            t.last = (now - NANOSECONDS_PER_SECOND) & M64
        if not self.offset_saved:
            self.hpet_offset = (self.hpet_counter * NS_PER_TICK - now) & M64
        self._resync_lines()


def _hpet_route(r: dict[str, Any], t: dict[str, Any]) -> str:
    if r["legacy"] and t["index"] < 2:
        return f"legacy line {(2, 8)[t['index']]}"
    if t["delivery"] == "fsb":
        return f"fsb 0x{t['fsb_address']:x}"
    return f"line {t['route']} (plic {t['plic_source']})"


def _hpet_lines(r: dict[str, Any]) -> list[str]:
    now = r["now_ns"]
    cfg = [name for on, name in ((r["enabled"], "ENABLE_CNF"), (r["legacy"], "LEG_RT_CNF")) if on]
    lines = [f"{r['id']} @ 0x{r['base']:016x}: CFG [{' '.join(cfg)}], {r['num_timers']} timers, "
             f"ISR 0x{r['isr']:x}, intcap 0x{r['intcap']:08x}",
             f" main counter 0x{r['counter']:016x} ({r['counter']} ticks of 10 ns), "
             f"vclock {now} ns",
             f" {'timer':<6} {'CONFIG':<10} {'MODE':<18} {'COMPARATOR':<18} "
             f"{'ROUTE':<24} NEXT DEADLINE"]
    for t in r["timers"]:
        mode = (f"{t['mode']}/{t['size']}/{t['trigger']}"
                + ("" if t["int_enabled"] else " off"))
        deadline = t["deadline_ns"]
        when = "--" if deadline is None else f"{deadline} ns (+{deadline - now})"
        lines.append(f" T{t['index']:<5} 0x{t['config'] & 0xFFFF_FFFF:08x} {mode:<18} "
                     f"0x{t['comparator']:016x} {_hpet_route(r, t):<24} {when}")
    return lines


def _check_num_timers(state: State) -> str | None:
    """QEMU >= 10.0: the stream's timer count must be the configured one (never adopted)."""
    configured = state.target.num_timers
    if state.num_timers_save != configured:
        return (f"num_timers must match: the stream has {state.num_timers_save} timers, "
                f"this hpet has {configured} (property 'timers')")
    return None


def _check_timer_index(state: State, version_id: int) -> None:
    # QEMU loads tn blindly; a different index would re-wire the timer's status bit.
    if state.tn != state.target.tn:
        raise ValueError(f"timer {state.target.tn} carries index {state.tn}")


VMSTATE_HPET_TIMER = VMStateDescription(
    "hpet_timer", 1, 1,
    [
        Field("tn", UINT8),
        Field("config", UINT64),
        Field("cmp", UINT64),
        Field("fsb", UINT64),
        Field("period", UINT64),
        Field("wrap_flag", UINT8),
        Field("qemu_timer", TIMER),
    ],
    post_load=_check_timer_index,
)

VMSTATE_HPET_RTC_IRQ_LEVEL = VMStateDescription(
    "hpet/rtc_irq_level", 1, 1, [Field("rtc_irq_level", UINT8)])

VMSTATE_HPET_OFFSET = VMStateDescription(
    "hpet/offset", 1, 1, [Field("hpet_offset", UINT64)])

# Version 2, minimum 2 as QEMU >= 10.1 (7.2: minimum 1, and the count byte gated to v2).
VMSTATE_HPET = VMStateDescription(
    "hpet", 2, 2,
    [
        Field("config", UINT64),
        Field("isr", UINT64),
        Field("hpet_counter", UINT64),
        Field("num_timers_save", UINT8),
        Validate("num_timers_save", _check_num_timers),
        Field("timer", VMSTATE_HPET_TIMER, attr="timers", num_field="num_timers_save"),
    ],
    subsections=[
        Subsection(VMSTATE_HPET_RTC_IRQ_LEVEL, lambda s: s.rtc_irq_level != 0),
        Subsection(VMSTATE_HPET_OFFSET, lambda s: s.enabled and s.offset_saved),
    ],
    pre_save=HPET._pre_save,
    loaded=HPET._loaded,
)

HPET.vmstate = VMSTATE_HPET
