"""One RV32IMAC hart with M and U modes and PMP: architectural state, CSRs, traps, run loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from itertools import repeat
from operator import length_hint
from typing import Any, Protocol

from emud import log
from emud.clock import VirtualClock
from emud.cpu import interp, pmp
from emud.cpu.csr import (
    INTERRUPT_BIT,
    IRQ_PRIORITY,
    MIE_WRITABLE,
    MISA_VALUE,
    MPP_SHIFT,
    MSTATUS_MIE,
    MSTATUS_MPIE,
    MSTATUS_MPP,
    MSTATUS_MPRV,
    MSTATUS_TW,
    MSTATUS_WRITABLE,
    PRV_M,
    PRV_U,
    Cause,
    Csr,
    counter_bit,
    is_hpm,
    is_read_only,
    lowest_privilege,
)
from emud.cpu.debug import BREAK, DebugStop, Watchpoint, WatchpointIndex
from emud.cpu.decode import ILLEGAL, expand_compressed, starts_overlapping
from emud.cpu.interp import NeedsSync, Op, Trap
from emud.cpu.semihosting import SemihostingHandler
from emud.cpu.triggers import RESET_TDATA1, TRIGGER_COUNT, Triggers, mcontrol_write
from emud.memory import (
    FLAG_CODE,
    FLAG_DEBUG,
    FLAG_LOAD,
    FLAG_SHIFT,
    FLAG_WATCH,
    GRANULE,
    AddressSpace,
    BusError,
)
from emud.vmstate import (
    BOOL,
    UINT8,
    UINT32,
    UINT64,
    Field,
    State,
    Subsection,
    VMStateDescription,
    VMStateError,
)

M = 0xFFFF_FFFF
M64 = (1 << 64) - 1  # the 64-bit counters wrap; their offsets are kept modulo 2**64


class Accelerator(Protocol):
    """A faster run loop (emud/cpu/translate.py) that keeps the interpreter's semantics."""

    def run(self, budget: int) -> int: ...
    def invalidate(self, addr: int, size: int) -> Iterable[int]:
        """Drop the translations that depend on the bytes [addr, addr+size) (or on a
        breakpoint or execute trigger there); the pcs of the instructions it no longer
        has translated anywhere."""
        ...
    def translated(self, addr: int, size: int) -> bool:
        """Whether a translated instruction overlaps [addr, addr+size)."""
        ...
    def flush(self) -> None:
        """Drop every translation, and FLAG_CODE where translated code was (the hart
        drops its decoded code at the same time)."""
        ...


class Hart:
    def __init__(self, bus: AddressSpace, clock: VirtualClock, hartid: int = 0) -> None:
        self.bus = bus
        self.clock = clock
        self.hartid = hartid
        self.x = [0] * 32
        self.pc = 0
        self.priv = PRV_M  # the current privilege level (PRV_U or PRV_M)
        self.mstatus = MSTATUS_MPP
        self.mcounteren = 0
        self.mie = 0
        self.mip = 0  # driven by interrupt lines, read-only to software
        self.mtvec = 0
        self.mscratch = 0
        self.mepc = 0
        self.mcause = 0
        self.mtval = 0
        # mcycle/minstret = icount + offset (they are writable).  The offsets are kept in
        # [0, 2**64): every value a counter can be written to has one representation, and
        # a snapshot stores it as a plain u64.
        self.cycle_offset = 0
        self.instret_offset = 0
        self.reservation: int | None = None
        # PMP: the CSRs as written, and the decoded rules they give.
        self.pmpcfg = [0] * pmp.ENTRIES
        self.pmpaddr = [0] * pmp.ENTRIES
        self.pmp_rules: tuple[pmp.Region, ...] = ()
        self.pmp_locked = False  # a locked entry: PMP applies to M-mode too
        self.time_source: Callable[[], int] = lambda: clock.now_ns // 100  # 10 MHz mtime
        # Run-loop flags
        self.synced = False  # the clock is exact: a NeedsSync instruction may run
        # The batch `interpret` runs now (None: none): its steps left, and the icount
        # its last step would have; together they give the icount inside it.
        self._steps: repeat[None] | None = None
        self._batch_last = 0
        self.waiting = False  # in WFI with nothing to wake it
        self.stop_requested = False  # leave the run loop after this instruction
        # Debugger (emud/cpu/debug.py)
        self.breakpoints: set[int] = set()
        self.watchpoints = WatchpointIndex()
        # A read watchpoint or load trigger exists: loads test FLAG_LOAD of their granule.
        self.watch_loads = False
        self.debug_stop: DebugStop | None = None  # why the last run stopped early
        self.debug_bypass = False  # running the instruction of the last debug stop unchecked
        self.irqs_masked = False  # set while a debugger single-steps
        # Sdtrig triggers (emud/cpu/triggers.py): guest exceptions, not debugger stops
        self.triggers = Triggers(self._triggers_changed)
        self._execute_triggers: frozenset[int] = frozenset()  # as the decoded ops have them
        self._access_triggers: frozenset[int] = frozenset()  # addresses flagged for triggers
        # Predecoded instructions, one cache per (privilege, checked) context: a U-mode
        # op was fetched under U's PMP rules, and a checked op takes the slow memory paths.
        # `checked`: PMP may deny an access or fetch now (U-mode, a locked entry, or MPRV
        # with MPP=U).  Unchecked code, the common case, runs at full speed.
        self.checked = False
        self.data_priv = PRV_M  # the privilege loads and stores are checked with
        self._caches: dict[tuple[int, bool], dict[int, Op]] = {(PRV_M, False): {}}
        self.cache: dict[int, Op] = self._caches[PRV_M, False]
        self._lengths: dict[int, int] = {}  # pc -> length of a decoded instruction there
        self.accel: Accelerator | None = None  # None: always interpret
        self.semihosting: SemihostingHandler | None = None  # None: ebreak always traps
        bus.on_code_write = self.invalidate_code

    def reset(self, entry: int) -> None:
        self.x[:] = [0] * 32
        self.x[10] = self.hartid
        self.pc = entry
        self.priv = PRV_M
        self.mstatus = MSTATUS_MPP
        self.mcounteren = 0
        self.pmpcfg[:] = [0] * pmp.ENTRIES
        self.pmpaddr[:] = [0] * pmp.ENTRIES
        self.mie = self.mtvec = self.mscratch = self.mepc = self.mcause = self.mtval = 0
        self.cycle_offset = self.instret_offset = 0
        self.reservation = None
        self.waiting = False
        self.debug_stop = None
        self.triggers.reset()
        self.flush_code()
        self.pmp_changed()

    # --- privilege and PMP -------------------------------------------------------

    def set_priv(self, priv: int) -> None:
        self.priv = priv
        self.update_context()

    def update_context(self) -> None:
        """Recompute what PMP may deny after priv, mstatus or the PMP CSRs change, and
        switch to the predecoded code built for it."""
        mprv = self.priv == PRV_M and self.mstatus & MSTATUS_MPRV
        self.data_priv = self.mstatus >> MPP_SHIFT & 3 if mprv else self.priv
        self.checked = self.pmp_locked or self.priv != PRV_M or self.data_priv != PRV_M
        self.cache = self._caches.setdefault((self.priv, self.checked), {})

    def pmp_changed(self) -> None:
        """The PMP CSRs changed: decode them again and drop the code fetched under the
        old rules.  Unchecked code never asked PMP, so it stays."""
        self.pmp_rules = pmp.regions(self.pmpcfg, self.pmpaddr)
        self.pmp_locked = pmp.any_locked(self.pmpcfg)
        dropped: set[int] = set()
        for (_, checked), cache in self._caches.items():
            if checked:
                dropped.update(cache)
                cache.clear()
        for pc in dropped:  # left in no context: no longer decoded (FLAG_CODE may go)
            if not any(pc in cache for cache in self._caches.values()):
                self._lengths.pop(pc, None)
        self.update_context()

    def pmp_check(self, addr: int, size: int, access: int, priv: int, cause: int) -> None:
        if not pmp.allowed(self.pmp_rules, addr, size, access, priv == PRV_M):
            raise Trap(cause, addr)

    def user_csr_allowed(self, csr: int) -> bool:
        """Whether U-mode may access a CSR: a user CSR, and for a counter, enabled in
        mcounteren."""
        if lowest_privilege(csr) > PRV_U:
            return False
        bit = counter_bit(csr)
        return bit is None or bool(self.mcounteren >> bit & 1)

    # --- interrupts ------------------------------------------------------------

    def set_irq(self, bit: int, level: bool) -> None:
        if level:
            self.mip |= 1 << bit
        else:
            self.mip &= ~(1 << bit)

    def _deliverable_irq(self) -> int | None:
        pending = self.mip & self.mie
        if not pending or self.irqs_masked:
            return None
        # Below M, M-level interrupts are always enabled: mstatus.MIE gates M-mode only.
        if self.priv == PRV_M and not self.mstatus & MSTATUS_MIE:
            return None
        return next(bit for bit in IRQ_PRIORITY if pending >> bit & 1)

    def enter_trap(self, cause: int, tval: int, pc: int) -> int:
        """Take a trap at `pc`; returns the handler address."""
        if log.trap_hooks:  # -d int / guest_errors, the timeline
            log.trap(self, cause, tval, pc)
        self.mepc = pc
        self.mcause = cause
        self.mtval = tval
        mie = self.mstatus & MSTATUS_MIE
        self.mstatus = (self.mstatus & ~(MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP)
                        | (MSTATUS_MPIE if mie else 0) | self.priv << MPP_SHIFT)
        if self.priv != PRV_M:
            self.set_priv(PRV_M)
        self.reservation = None
        if not cause & INTERRUPT_BIT:
            # The faulting instruction takes a clock step but does not retire.
            self.instret_offset = (self.instret_offset - 1) & M64
        base = self.mtvec & ~3
        if cause & INTERRUPT_BIT and self.mtvec & 1:
            return (base + 4 * (cause & ~INTERRUPT_BIT)) & M
        return base

    def mret(self, insn: int) -> int:
        if self.priv != PRV_M:
            raise Trap(Cause.ILLEGAL_INSN, insn)
        mstatus = self.mstatus
        priv = mstatus >> MPP_SHIFT & 3
        # MIE from MPIE, MPIE set, MPP to U (the least privileged mode); leaving M clears MPRV.
        mstatus = (mstatus & ~(MSTATUS_MIE | MSTATUS_MPP)
                   | (MSTATUS_MIE if mstatus & MSTATUS_MPIE else 0) | MSTATUS_MPIE)
        if priv != PRV_M:
            mstatus &= ~MSTATUS_MPRV
        self.mstatus = mstatus
        self.set_priv(priv)
        return self.mepc

    def wait_for_interrupt(self, insn: int) -> None:
        # With no S-mode, U-mode may wait unless mstatus.TW traps it (as QEMU does).
        if self.priv != PRV_M and self.mstatus & MSTATUS_TW:
            raise Trap(Cause.ILLEGAL_INSN, insn)
        # WFI is a no-op when an enabled interrupt is pending, even with MIE clear.
        self.waiting = not self.mip & self.mie

    # --- CSRs ------------------------------------------------------------------

    def csr_read(self, csr: int, insn: int) -> int:
        read = CSR_READS.get(csr)  # one lookup: a match over enum members costs microseconds
        if read is not None:
            return read(self)
        if Csr.PMPCFG0 <= csr <= Csr.PMPCFG3:
            return pmp.cfg_word(self.pmpcfg, csr - Csr.PMPCFG0)
        if Csr.PMPADDR0 <= csr <= Csr.PMPADDR15:
            return self.pmpaddr[csr - Csr.PMPADDR0]
        if is_hpm(csr):
            return 0
        value = self.triggers.read(csr)
        if value is None:
            raise Trap(Cause.ILLEGAL_INSN, insn)
        return value

    def csr_reader(self, csr: int, insn: int) -> Callable[[], int]:
        """csr_read of one CSR as a function, for an op to call with no lookup."""
        read = CSR_READS.get(csr)
        if read is not None:
            return partial(read, self)
        return partial(self.csr_read, csr, insn)

    def csr_writer(self, csr: int, insn: int) -> Callable[[int], None]:
        """csr_write of one CSR as a function; a plain register is set directly."""
        field = PLAIN_FIELDS.get(csr)
        if field is not None:
            return partial(setattr, self, field)
        return lambda value: self.csr_write(csr, value, insn)

    def icount_now(self) -> int:
        """The icount of the instruction running now.  Inside a batch the clock lags
        (it is advanced when the batch ends), but how many steps the batch has left tells
        exactly how many of its instructions retired before this one."""
        steps = self._steps
        if steps is None or self.synced:
            return self.clock.icount
        return self._batch_last - length_hint(steps)

    def csr_write(self, csr: int, value: int, insn: int) -> None:
        if is_read_only(csr):
            raise Trap(Cause.ILLEGAL_INSN, insn)
        field = PLAIN_FIELDS.get(csr)
        if field is not None:  # stored unchanged (csr_writer sets these directly too)
            setattr(self, field, value)
            return
        icount = self.icount_now()
        match csr:
            case Csr.MSTATUS:
                if (value >> MPP_SHIFT & 3) not in (PRV_U, PRV_M):  # WARL: keep the old MPP
                    value = value & ~MSTATUS_MPP | self.mstatus & MSTATUS_MPP
                self.mstatus = value & MSTATUS_WRITABLE
                self.update_context()
            case _ if Csr.PMPCFG0 <= csr <= Csr.PMPCFG3:
                self.pmpcfg[:] = pmp.cfg_write(self.pmpcfg, csr - Csr.PMPCFG0, value)
                self.pmp_changed()
            case _ if Csr.PMPADDR0 <= csr <= Csr.PMPADDR15:
                if pmp.addr_writable(self.pmpcfg, csr - Csr.PMPADDR0):
                    self.pmpaddr[csr - Csr.PMPADDR0] = value
                    self.pmp_changed()
            case Csr.MIE:
                self.mie = value & MIE_WRITABLE
            case Csr.MTVEC:
                if value & 3 < 2:  # modes 2 and 3 are reserved: keep the old value
                    self.mtvec = value
            case Csr.MEPC:
                self.mepc = value & ~1
            case Csr.MISA | Csr.MIP | Csr.MSTATUSH | Csr.MCOUNTINHIBIT:
                pass  # WARL fields we keep fixed; mip bits are driven by devices
            case _ if is_hpm(csr):
                pass  # hardwired to zero
            case Csr.MCYCLE:
                cycle = icount + self.cycle_offset
                self.cycle_offset = (((cycle & ~M) | value) - icount) & M64
            case Csr.MCYCLEH:
                cycle = icount + self.cycle_offset
                self.cycle_offset = (((value << 32) | (cycle & M)) - icount) & M64
            case Csr.MINSTRET:
                # The writing instruction itself must not count (it retires after the write).
                instret = icount + self.instret_offset
                self.instret_offset = (((instret & ~M) | value) - icount - 1) & M64
            case Csr.MINSTRETH:
                instret = icount + self.instret_offset
                self.instret_offset = (((value << 32) | (instret & M)) - icount - 1) & M64
            case _:
                if not self.triggers.write(csr, value):
                    raise Trap(Cause.ILLEGAL_INSN, insn)

    # --- memory slow paths (called from closures) ----------------------------------

    def load_slow(self, addr: int, size: int, signed: bool, inline: bool = True) -> int:
        """A load the fast path does not do.  `inline`: a quiet device read may run
        inside the batch (not for an AMO, whose store may still need a sync and re-run
        it)."""
        if self.triggers.loads:  # a trigger's breakpoint comes before a misaligned fault
            self._check_access_trigger(addr, size, False)
        if addr & (size - 1):
            raise Trap(Cause.LOAD_MISALIGNED, addr)
        if self.checked:
            self.pmp_check(addr, size, pmp.R, self.data_priv, Cause.LOAD_ACCESS)
        if self.watchpoints and not self.debug_bypass:
            self.watchpoints.check(addr, size, False)
        ram = self.bus.ram
        if not ram.contains(addr, size):
            if not self.synced:
                if not inline or self._steps is None or not self.bus.quiet_read(addr):
                    raise NeedsSync
                # Inside a batch, a read that changes nothing the run loop reacts to
                # (interrupts, deadlines) runs at once, the clock brought up to it.
                self.clock.advance_insns(self.icount_now() - self.clock.icount)
            try:
                value = self.bus.read(addr, size)
            except BusError:
                raise Trap(Cause.LOAD_ACCESS, addr) from None
        else:
            offset = addr - ram.base
            value = int.from_bytes(ram.data[offset : offset + size], "little")
        if signed and value >> (8 * size - 1):
            value -= 1 << (8 * size)
        return value & M

    def store_slow(self, addr: int, value: int, size: int) -> None:
        if self.triggers.stores:
            self._check_access_trigger(addr, size, True)
        if addr & (size - 1):
            raise Trap(Cause.STORE_MISALIGNED, addr)
        if self.checked:
            self.pmp_check(addr, size, pmp.W, self.data_priv, Cause.STORE_ACCESS)
        if self.watchpoints and not self.debug_bypass:
            self.watchpoints.check(addr, size, True)
        ram = self.bus.ram
        if ram.contains(addr, size):
            if ram.flags[(addr - ram.base) >> FLAG_SHIFT] & FLAG_WATCH and not self.synced:
                raise NeedsSync
            self.bus.store_ram(addr, value, size)
            return
        if not self.synced:
            raise NeedsSync
        try:
            self.bus.write(addr, value, size)
        except BusError:
            raise Trap(Cause.STORE_ACCESS, addr) from None

    def amo_load(self, addr: int) -> int:
        try:
            return self.load_slow(addr, 4, False, inline=False)
        except Trap as trap:  # an AMO reports its access faults as store/AMO faults
            if trap.cause != Cause.LOAD_ACCESS:
                raise  # a trigger's breakpoint stays one
            raise Trap(Cause.STORE_ACCESS, addr) from trap

    # --- predecoded code -------------------------------------------------------

    def raw_halfword(self, pc: int) -> int:
        """A fetch of 16 bits; a 32-bit instruction is two, each checked by PMP."""
        ram = self.bus.ram
        if not ram.contains(pc, 2):
            raise Trap(Cause.INSN_ACCESS, pc)
        if self.checked:
            self.pmp_check(pc, 2, pmp.X, self.priv, Cause.INSN_ACCESS)
        return ram.u16[(pc - ram.base) >> 1]

    def decode(self, pc: int) -> Op:
        """Predecode the instruction at pc and remember it.  Fetch faults raise Trap."""
        ram = self.bus.ram
        offset = pc - ram.base
        if not self.checked and 0 <= offset <= ram.size - 4 and not offset & 1:
            # The common fetch, whole in RAM with nothing to check: one 32-bit read.
            word = int.from_bytes(ram.data[offset:offset + 4], "little")
            low = word & 0xFFFF
        else:
            word = -1  # fetch halfword by halfword, each checked (raw_halfword)
            low = self.raw_halfword(pc)
        if low & 3 == 3:
            insn, length = word if word >= 0 else low | (self.raw_halfword(pc + 2) << 16), 4
        else:
            insn, length = expand_compressed(low), 2
        op = interp._illegal(low) if insn == ILLEGAL else interp.build(self, insn, pc, length)
        if log.in_asm:
            log.decoded(self, pc)
        if pc in self.triggers.execute:
            op = self._execute_trigger(op, pc)
        if pc in self.breakpoints:
            op = self._breakpoint(op, pc)
        self.cache[pc] = op
        self._lengths[pc] = length
        flags, granule = ram.flags, (pc - ram.base) >> FLAG_SHIFT
        flags[granule] |= FLAG_CODE
        flags[(pc + length - 1 - ram.base) >> FLAG_SHIFT] |= FLAG_CODE
        return op

    def invalidate_code(self, addr: int, size: int) -> None:
        """Bytes [addr, addr+size) changed (a store, a debugger write), or the breakpoint
        or execute trigger at addr did: drop the decoded instructions overlapping them, in
        every context, and the translations that depend on them.  A granule keeps
        FLAG_CODE while any decoded or translated instruction is left in it."""
        lengths, caches = self._lengths, self._caches.values()
        end = addr + size
        if size <= GRANULE:  # a store: look at the few pcs that may overlap it
            pcs = [pc for pc in starts_overlapping(addr, size)
                   if pc in lengths and pc + lengths[pc] > addr]
        else:  # a debugger or loader write may be large: look at what is decoded
            pcs = [pc for pc, n in lengths.items() if pc < end and pc + n > addr]
        for pc in pcs:
            del lengths[pc]
            for cache in caches:
                cache.pop(pc, None)
        if self.accel is not None:
            pcs += self.accel.invalidate(addr, size)
        ram = self.bus.ram
        granules = {g for pc in pcs for g in ram.granules(pc, 4)}
        granules.update(g for g in ram.granules(addr, size) if ram.flags[g] & FLAG_CODE)
        for g in granules:
            lo = ram.base + (g << FLAG_SHIFT)
            if not self._holds_code(lo, GRANULE):
                ram.flags[g] &= ~FLAG_CODE

    def _holds_code(self, addr: int, size: int) -> bool:
        """Whether a decoded or translated instruction overlaps [addr, addr+size)."""
        lengths = self._lengths
        if any(pc in lengths and pc + lengths[pc] > addr
               for pc in starts_overlapping(addr, size)):
            return True
        return self.accel is not None and self.accel.translated(addr, size)

    def flush_code(self) -> None:
        """Drop every decoded and translated instruction (fence.i, a reset, a snapshot)."""
        for cache in self._caches.values():
            cache.clear()
        ram = self.bus.ram
        for pc, n in self._lengths.items():  # what is decoded, not all of RAM: fence.i is common
            for g in ram.granules(pc, n):
                ram.flags[g] &= ~FLAG_CODE
        self._lengths.clear()
        if self.accel is not None:
            self.accel.flush()

    # --- debugger --------------------------------------------------------------

    def _breakpoint(self, op: Op, pc: int) -> Op:
        def stop() -> int:
            if self.debug_bypass:
                return op()
            raise DebugStop(BREAK, pc)

        return stop

    def _execute_trigger(self, op: Op, pc: int) -> Op:
        def check() -> int:
            if self.triggers.fires_execute(pc, self.priv, bool(self.mstatus & MSTATUS_MIE)):
                raise Trap(Cause.BREAKPOINT, pc)
            return op()

        return check

    def _check_access_trigger(self, addr: int, size: int, store: bool) -> None:
        tval = self.triggers.match_access(addr, size, store, self.priv,
                                          bool(self.mstatus & MSTATUS_MIE))
        if tval is not None:
            raise Trap(Cause.BREAKPOINT, tval)

    def _triggers_changed(self) -> None:
        """Armed triggers are checked by the interpreter: execute ones in the op at their
        pc (translated code stops before it), loads in load_slow and stores in store_slow,
        where the granule of their address is flagged FLAG_LOAD or FLAG_DEBUG."""
        triggers = self.triggers
        for pc in self._execute_triggers ^ triggers.execute:
            self.invalidate_code(pc, 1)
        self._execute_triggers = triggers.execute
        access = triggers.loads | triggers.stores
        for addr in self._access_triggers | access:
            self._debug_flags_changed(addr, 1)
        self._access_triggers = access
        self._slow_loads_changed()

    def set_breakpoint(self, pc: int, present: bool) -> None:
        """Breakpoints never touch guest memory: the op at pc is rebuilt with a stop, and
        translated code is rebuilt to leave before pc."""
        if (pc in self.breakpoints) != present:
            (self.breakpoints.add if present else self.breakpoints.discard)(pc)
            self.invalidate_code(pc, 1)

    def decoded(self, pc: int) -> bool:
        """Whether an instruction at pc is predecoded in any context: `_lengths` holds
        exactly those pcs (decode adds, invalidation, PMP changes and flushes remove)."""
        return pc in self._lengths

    def add_watchpoint(self, w: Watchpoint) -> None:
        """Stores to the watched RAM granules take the slow path (FLAG_DEBUG); while any
        read watchpoint exists, loads from the watched granules do (FLAG_LOAD)."""
        if self.watchpoints.add(w):  # more is watched: its granules are flagged
            ram = self.bus.ram
            bits = (FLAG_DEBUG if w.writes else 0) | (FLAG_LOAD if w.reads else 0)
            ram.set_flags(ram.granules(w.addr, w.length), bits)
            self._slow_loads_changed()

    def remove_watchpoint(self, w: Watchpoint) -> None:
        if self.watchpoints.remove(w):
            self._debug_flags_changed(w.addr, w.length)
            self._slow_loads_changed()

    def _debug_flags_changed(self, addr: int, length: int) -> None:
        """Recompute FLAG_DEBUG and FLAG_LOAD over the granules of [addr, addr+length)
        from the watchpoints and triggers there: what they cover there, merged, is
        flagged at C speed, however many overlap (gdb removes them one by one)."""
        ram = self.bus.ram
        span = ram.granules(addr, length)
        if not span:
            return
        ram.clear_flags(span, FLAG_DEBUG | FLAG_LOAD)
        lo = ram.base + (span.start << FLAG_SHIFT)
        hi = ram.base + (span.stop << FLAG_SHIFT)
        writes: list[tuple[int, int]] = []
        reads: list[tuple[int, int]] = []
        for w in self.watchpoints.overlapping(lo, hi - lo):
            covered = (max(w.addr, lo), min(w.addr + w.length, hi))
            if w.writes:
                writes.append(covered)
            if w.reads:
                reads.append(covered)
        writes += [(a, a + 1) for a in self.triggers.stores if lo <= a < hi]
        reads += [(a, a + 1) for a in self.triggers.loads if lo <= a < hi]
        for bits, ranges in ((FLAG_DEBUG, writes), (FLAG_LOAD, reads)):
            for start, stop in _merged(ranges):
                ram.set_flags(ram.granules(start, stop - start), bits)

    def _slow_loads_changed(self) -> None:
        """Loads test FLAG_LOAD only while something watches them: their ops and
        translations are rebuilt when that changes."""
        loads = self.watchpoints.readers > 0 or bool(self.triggers.loads)
        if loads != self.watch_loads:
            self.watch_loads = loads
            self.flush_code()

    # --- the run loop ------------------------------------------------------------

    def run(self, budget: int) -> int:
        """Execute up to `budget` instructions; returns how many were consumed.

        Stops early on WFI with nothing pending, when `stop_requested` is set, or
        on a breakpoint or watchpoint (`debug_stop`).  The clock advances as
        instructions retire (an instruction that traps also takes one step, so a
        trap storm still makes progress).
        """
        stop, self.debug_stop = self.debug_stop, None
        if stop is not None and stop.pc == self.pc and budget and self._deliverable_irq() is None:
            # Resuming from a debug stop: its instruction runs once without the checks.
            self.debug_bypass = True
            try:
                done = self._run(1)
            finally:
                self.debug_bypass = False
            return done + self._run(budget - done)
        return self._run(budget)

    def _run(self, budget: int) -> int:
        if log.per_block:  # -d exec / cpu need every block boundary: the interpreter, stepped
            return log.run_blocks(self, budget)
        accel = self.accel
        # Translated code never asks PMP: it runs only while PMP cannot deny anything.
        # Breakpoints, watchpoints and triggers keep translation: regions leave before a
        # stop pc, and a watched access leaves through its granule's flag.
        if accel is None or self.debug_bypass or self.checked:
            return self.interpret(budget)
        return accel.run(budget)

    def interpret(self, budget: int) -> int:
        """The reference interpreter loop; accelerators call it for what they cannot run.

        A batch runs ops back to back until the budget or the next deadline; only an op
        that leaves by an exception ends it early.  The clock is advanced by the
        instructions that retired when the batch ends (and before an instruction that
        needs it exact), and interrupts are looked at between batches.  A batch counts
        with `repeat`: how many steps it has left tells how many ran when an op
        raised, which is cheaper than a counter (range makes an int per step)."""
        try:
            return self._interpret(budget)
        finally:
            self._steps = None  # outside a batch the clock is exact

    def _interpret(self, budget: int) -> int:
        cache, decode, clock = self.cache, self.decode, self.clock
        pc = self.pc
        done = 0
        while done < budget and not self.stop_requested and not self.waiting:
            if self.mip & self.mie and (irq := self._deliverable_irq()) is not None:
                pc = self.enter_trap(INTERRUPT_BIT | irq, 0, pc)
                cache = self.cache
            n = budget - done
            i = 0  # steps of this batch taken: instructions retired, trapped or run synced
            base = clock.icount  # the clock reaches base + i by the end of the batch
            self._batch_last = base + n - 1  # for icount_now
            while i < n:
                self._steps = steps = repeat(None, n - i)
                try:
                    # Ops raise only Trap, NeedsSync and DebugStop; a KeyError can only
                    # be a cache miss.
                    for _ in steps:
                        pc = cache[pc]()
                    i = n
                except KeyError:
                    i = n - length_hint(steps) - 1
                    try:
                        decode(pc)
                    except Trap as trap:  # fetch fault
                        pc = self._take_trap(trap, pc, base + i)
                        i += 1
                        break
                    # nothing retired and time did not move: go on
                except NeedsSync:
                    i = n - length_hint(steps) - 1
                    pc = self._run_synced(cache, pc, base + i)
                    i += 1
                    if not self._batch_goes_on(cache, n - i):
                        break
                except Trap as trap:
                    i = n - length_hint(steps) - 1
                    if log.trap_hooks:  # they look at the clock: it must be exact
                        pc = self._take_trap(trap, pc, base + i)
                        i += 1
                        break
                    # Nothing is due inside a batch, and a trap leaves interrupts off
                    # (M-mode, MIE clear): the batch goes on into the handler, the clock
                    # to catch up at its end.
                    pc = self.enter_trap(trap.cause, trap.tval, pc)
                    cache = self.cache
                    i += 1
                except DebugStop as stop:
                    i = n - length_hint(steps) - 1
                    clock.advance_insns(base + i - clock.icount)
                    stop.pc = pc
                    self.debug_stop = stop
                    self.pc = pc
                    return done + i
            self._steps = None
            clock.advance_insns(base + i - clock.icount)
            cache = self.cache  # traps, mret and CSR writes may change the context
            done += i
            if done < budget:  # a timer armed during this run may be due before its end
                budget = done + clock.insns_until_deadline(budget - done)
        self.pc = pc
        return done

    def _take_trap(self, trap: Trap, pc: int, icount: int) -> int:
        """Take a trap at an exact clock: advanced to `icount` (the instructions before
        it), then by the step of the faulting instruction.  Returns the handler's pc."""
        clock = self.clock
        clock.advance_insns(icount - clock.icount)
        pc = self.enter_trap(trap.cause, trap.tval, pc)
        clock.advance_insns(1)
        return pc

    def _run_synced(self, cache: dict[int, Op], pc: int, icount: int) -> int:
        """Run the instruction at pc with the clock exact (advanced to `icount`), then
        give it its step; returns the next pc (a trap's handler if it trapped)."""
        clock = self.clock
        clock.advance_insns(icount - clock.icount)
        self.synced = True
        try:
            pc = cache[pc]()
        except Trap as trap:
            pc = self.enter_trap(trap.cause, trap.tval, pc)
        finally:
            self.synced = False
        clock.advance_insns(1)
        return pc

    def _batch_goes_on(self, cache: dict[int, Op], left: int) -> bool:
        """After a synced instruction: whether the batch may run its `left` steps as the
        next batch would.  Not if it must stop or wait, the context changed, an interrupt
        is now deliverable, or a deadline now falls inside those steps."""
        if not left or self.stop_requested or self.waiting or self.cache is not cache:
            return False
        if self.mip & self.mie and self._deliverable_irq() is not None:
            return False
        return self.clock.insns_until_deadline(left) == left


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ranges as the fewest disjoint ones covering the same addresses."""
    out: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], stop))
        else:
            out.append((start, stop))
    return out


def _cycle(hart: Hart) -> int:
    return hart.icount_now() + hart.cycle_offset


def _instret(hart: Hart) -> int:
    return hart.icount_now() + hart.instret_offset


# The CSRs a write stores unchanged into an attribute of the hart (csr_write and
# csr_writer both take them from here).
PLAIN_FIELDS: dict[int, str] = {Csr.MSCRATCH: "mscratch", Csr.MCAUSE: "mcause",
                                Csr.MTVAL: "mtval", Csr.MCOUNTEREN: "mcounteren"}

# The CSRs read by a plain function of the hart (PMP, hpm counters and triggers are ranges).
CSR_READS: dict[int, Callable[[Hart], int]] = {
    Csr.MSTATUS: lambda h: h.mstatus,
    Csr.MISA: lambda h: MISA_VALUE,
    Csr.MIE: lambda h: h.mie,
    Csr.MIP: lambda h: h.mip,
    Csr.MTVEC: lambda h: h.mtvec,
    Csr.MCOUNTEREN: lambda h: h.mcounteren,
    **dict.fromkeys((Csr.MSTATUSH, Csr.MCOUNTINHIBIT, Csr.MVENDORID, Csr.MARCHID, Csr.MIMPID),
                    lambda h: 0),
    Csr.MHARTID: lambda h: h.hartid,
    Csr.MSCRATCH: lambda h: h.mscratch,
    Csr.MEPC: lambda h: h.mepc,
    Csr.MCAUSE: lambda h: h.mcause,
    Csr.MTVAL: lambda h: h.mtval,
    **dict.fromkeys((Csr.MCYCLE, Csr.CYCLE), lambda h: _cycle(h) & M),
    **dict.fromkeys((Csr.MCYCLEH, Csr.CYCLEH), lambda h: _cycle(h) >> 32 & M),
    **dict.fromkeys((Csr.MINSTRET, Csr.INSTRET), lambda h: _instret(h) & M),
    **dict.fromkeys((Csr.MINSTRETH, Csr.INSTRETH), lambda h: _instret(h) >> 32 & M),
    Csr.TIME: lambda h: h.time_source() & M,
    Csr.TIMEH: lambda h: h.time_source() >> 32 & M,
}


# --- vmstate: emud's own `cpu` section ------------------------------------------------


class HartState:
    """The hart as vmstate sees it: the LR reservation travels as a flag and an address."""

    hart: Hart

    def __init__(self, hart: Hart) -> None:
        object.__setattr__(self, "hart", hart)

    def __getattr__(self, name: str) -> Any:
        hart: Hart = object.__getattribute__(self, "hart")
        if name == "reservation_valid":
            return hart.reservation is not None
        if name == "reservation_addr":
            return hart.reservation or 0
        if name in TRIGGER_FIELDS:
            return getattr(hart.triggers, TRIGGER_FIELDS[name])
        return getattr(hart, name)

    def __setattr__(self, name: str, value: Any) -> None:
        hart: Hart = object.__getattribute__(self, "hart")
        if name == "reservation_valid":
            hart.reservation = 0 if value else None  # the address follows
        elif name == "reservation_addr":
            if hart.reservation is not None:
                hart.reservation = value
        elif name in TRIGGER_FIELDS:
            setattr(hart.triggers, TRIGGER_FIELDS[name], value)
        else:
            setattr(hart, name, value)


TRIGGER_FIELDS = {"trigger_select": "tselect", "trigger_tdata1": "tdata1",
                  "trigger_tdata2": "tdata2"}
# Sent only when a trigger is configured, so the section of a hart that never used
# one is the same bytes as before triggers existed, and such a snapshot loads here.
VMSTATE_TRIGGERS = VMStateDescription(
    "cpu/triggers", 1, 1,
    [Field("trigger_select", UINT32), Field("trigger_tdata1", UINT32, num=TRIGGER_COUNT),
     Field("trigger_tdata2", UINT32, num=TRIGGER_COUNT)],
)


def _hart_post_load(state: State, version_id: int) -> None:
    if version_id < 2:  # an M-only hart: M-mode, no counter enabled for U, no PMP entry
        state.priv, state.mcounteren = PRV_M, 0
        state.pmpcfg, state.pmpaddr = [0] * pmp.ENTRIES, [0] * pmp.ENTRIES
    elif state.priv not in (PRV_U, PRV_M):
        raise VMStateError("cpu", f"privilege level {state.priv} is not implemented")
    if "cpu/triggers" not in state.loaded_subsections:  # an older or unconfigured hart
        state.trigger_select = 0
        state.trigger_tdata1 = [RESET_TDATA1] * TRIGGER_COUNT
        state.trigger_tdata2 = [0] * TRIGGER_COUNT
    if state.trigger_select >= TRIGGER_COUNT or any(
            mcontrol_write(v) != v for v in state.trigger_tdata1):
        raise VMStateError("cpu", "trigger state out of range (tselect or tdata1)")


def _hart_loaded(view: HartState) -> None:
    hart: Hart = object.__getattribute__(view, "hart")
    hart.triggers.update()
    hart.flush_code()
    hart.pmp_changed()  # decodes the PMP CSRs and sets the context for priv and mstatus


# Version 2 adds U-mode and PMP (priv, mcounteren, the PMP CSRs; mstatus only gains
# bits).  A version 1 stream is from an M-only hart: the fields it lacks keep the
# values of a reset hart, which are what that hart had (M-mode, no PMP entry).
VMSTATE_HART = VMStateDescription(
    "cpu", 2, 1,
    [Field("x", UINT32, num=32), Field("pc", UINT32), Field("mstatus", UINT32),
     Field("mie", UINT32), Field("mip", UINT32), Field("mtvec", UINT32),
     Field("mscratch", UINT32), Field("mepc", UINT32), Field("mcause", UINT32),
     Field("mtval", UINT32), Field("cycle_offset", UINT64), Field("instret_offset", UINT64),
     Field("reservation_valid", BOOL), Field("reservation_addr", UINT32),
     Field("waiting", BOOL),
     Field("priv", UINT8, version=2), Field("mcounteren", UINT32, version=2),
     Field("pmpcfg", UINT8, num=pmp.ENTRIES, version=2),
     Field("pmpaddr", UINT32, num=pmp.ENTRIES, version=2)],
    subsections=[Subsection(VMSTATE_TRIGGERS, lambda view: view.triggers.configured)],
    post_load=_hart_post_load,
    loaded=_hart_loaded,
)
