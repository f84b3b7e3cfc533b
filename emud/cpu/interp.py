"""The reference interpreter: each instruction predecoded into a closure.

`build(hart, insn, pc, length)` returns a zero-argument function that executes
the instruction and returns the next pc.  Registers are kept unsigned in
0..2**32-1.  Closures capture everything they need as free variables, which
is the fastest thing CPython offers for this shape of code.

Control leaves a closure by an exception only in rare cases: `Trap` (a
synchronous exception, the instruction did not retire) and `NeedsSync` (the
instruction must run with the clock exact: MMIO, WFI, MRET, reads of `time` and
CSR writes that may change what interrupts or code apply; the run loop commits
progress and calls it again with `hart.synced` set).  Other CSR accesses run in
the batch: the counters read `hart.icount_now()`, exact there too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from emud.cpu import decode as d
from emud.cpu.csr import PRV_M, Cause, lowest_privilege, needs_sync
from emud.cpu.semihosting import is_call as is_semihosting_call
from emud.memory import FLAG_LOAD, FLAG_SHIFT

if TYPE_CHECKING:
    from emud.cpu.hart import Hart

Op = Callable[[], int]
M = d.MASK32
SIGN = 0x8000_0000
W = 1 << 32  # what a sum or difference that wrapped is corrected by


class Trap(Exception):
    def __init__(self, cause: int, tval: int = 0) -> None:
        super().__init__(cause, tval)
        self.cause = cause
        self.tval = tval


class NeedsSync(Exception):
    """Re-run this instruction with `hart.synced` set, after committing progress."""


def _signed(v: int) -> int:
    return v - ((v & SIGN) << 1)


def div(a: int, b: int) -> int:
    if b == 0:
        return M
    sa, sb = _signed(a), _signed(b)
    if sa == -SIGN and sb == -1:
        return a
    q = abs(sa) // abs(sb)
    return (-q if (sa < 0) != (sb < 0) else q) & M


def rem(a: int, b: int) -> int:
    if b == 0:
        return a
    sa, sb = _signed(a), _signed(b)
    if sa == -SIGN and sb == -1:
        return 0
    r = abs(sa) % abs(sb)
    return (-r if sa < 0 else r) & M


# Register-register and register-immediate ALU semantics, keyed by (funct7, funct3).
ALU_RR: dict[tuple[int, int], Callable[[int, int], int]] = {
    (0x00, 0): lambda a, b: (a + b) & M,
    (0x20, 0): lambda a, b: (a - b) & M,
    (0x00, 1): lambda a, b: (a << (b & 31)) & M,
    (0x00, 2): lambda a, b: int((a ^ SIGN) < (b ^ SIGN)),
    (0x00, 3): lambda a, b: int(a < b),
    (0x00, 4): lambda a, b: a ^ b,
    (0x00, 5): lambda a, b: a >> (b & 31),
    (0x20, 5): lambda a, b: (_signed(a) >> (b & 31)) & M,
    (0x00, 6): lambda a, b: a | b,
    (0x00, 7): lambda a, b: a & b,
    (0x01, 0): lambda a, b: (a * b) & M,
    (0x01, 1): lambda a, b: ((_signed(a) * _signed(b)) >> 32) & M,
    (0x01, 2): lambda a, b: ((_signed(a) * b) >> 32) & M,
    (0x01, 3): lambda a, b: (a * b) >> 32,
    (0x01, 4): div,
    (0x01, 5): lambda a, b: a // b if b else M,
    (0x01, 6): rem,
    (0x01, 7): lambda a, b: a % b if b else a,
}

AMO: dict[int, Callable[[int, int], int]] = {  # funct5 -> new memory value from (old, rs2)
    0x01: lambda old, src: src,
    0x00: lambda old, src: (old + src) & M,
    0x04: lambda old, src: old ^ src,
    0x0C: lambda old, src: old & src,
    0x08: lambda old, src: old | src,
    0x10: lambda old, src: old if (old ^ SIGN) < (src ^ SIGN) else src,
    0x14: lambda old, src: old if (old ^ SIGN) > (src ^ SIGN) else src,
    0x18: lambda old, src: min(old, src),
    0x1C: lambda old, src: max(old, src),
}


def build(hart: Hart, insn: int, pc: int, length: int) -> Op:
    """Predecode one instruction (already expanded from RVC) into a closure."""
    npc = (pc + length) & M
    opcode = insn & 0x7F
    factory = _FACTORIES.get(opcode)
    op = factory(hart, insn, pc, npc) if factory else None
    if op is None:
        raw = insn if length == 4 else hart.raw_halfword(pc)
        return _illegal(raw)
    return op


def _illegal(raw: int) -> Op:
    def op() -> int:
        raise Trap(Cause.ILLEGAL_INSN, raw)

    return op


def _nop(npc: int) -> Op:
    return lambda: npc


# --- integer computation ---------------------------------------------------------
#
# Specialised closures for the commonest forms: x0 as a source or destination, the
# sign of an immediate.  CPython's int arithmetic is fast only on operands below
# 2**30, so where it measured faster a wrap is a compare and a correction by W
# instead of `& M`, and a signed compare picks the unsigned order by the sign bits
# instead of xoring both sides with SIGN.


def _constant(x: list[int], rd: int, value: int, npc: int) -> Op:
    if rd == 0:
        return _nop(npc)

    def op() -> int:
        x[rd] = value
        return npc

    return op


def _move(x: list[int], rd: int, rs: int, npc: int) -> Op:
    if rs == 0:
        return _constant(x, rd, 0, npc)

    def op() -> int:
        x[rd] = x[rs]
        return npc

    return op


def _lui(hart: Hart, insn: int, pc: int, npc: int) -> Op:
    return _constant(hart.x, d.rd(insn), d.imm_u(insn), npc)


def _auipc(hart: Hart, insn: int, pc: int, npc: int) -> Op:
    return _constant(hart.x, d.rd(insn), (pc + d.imm_u(insn)) & M, npc)


def _op_imm(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    x, rd, rs1, f3, imm = hart.x, d.rd(insn), d.rs1(insn), d.funct3(insn), d.imm_i(insn)
    if f3 in (1, 5):  # shifts: imm[11:5] selects the kind, shamt is 5 bits on RV32
        f7, shamt = d.funct7(insn), imm & 31
        if (f3, f7) not in ((1, 0x00), (5, 0x00), (5, 0x20)):
            return None
    if rd == 0:
        return _nop(npc)
    uimm = imm & M
    if rs1 == 0:  # li and friends: the result is a constant
        return _constant(x, rd, ALU_RR[f7 if f3 == 5 else 0, f3](0, uimm), npc)
    if f3 == 0:
        if imm == 0:
            return _move(x, rd, rs1, npc)
        if imm > 0:
            def op() -> int:
                v = x[rs1] + imm
                x[rd] = v if v <= M else v - W
                return npc
        else:
            def op() -> int:
                v = x[rs1] + imm
                x[rd] = v if v >= 0 else v + W
                return npc
    elif f3 == 1:
        def op() -> int:
            x[rd] = (x[rs1] << shamt) & M
            return npc
    elif f3 == 2:
        if imm >= 0:  # not below a non-negative immediate: from it up to the negatives
            def op() -> int:
                x[rd] = 0 if imm <= x[rs1] < SIGN else 1
                return npc
        else:  # below a negative immediate: negative, and below it unsigned too
            def op() -> int:
                x[rd] = 1 if SIGN <= x[rs1] < uimm else 0
                return npc
    elif f3 == 3:
        def op() -> int:
            x[rd] = 1 if x[rs1] < uimm else 0
            return npc
    elif f3 == 4:
        def op() -> int:
            x[rd] = x[rs1] ^ uimm
            return npc
    elif f3 == 5 and f7 == 0:
        def op() -> int:
            x[rd] = x[rs1] >> shamt
            return npc
    elif f3 == 5:
        fill = M ^ (M >> shamt)  # the copies of the sign bit shifted in

        def op() -> int:
            v = x[rs1]
            x[rd] = v >> shamt | fill if v > 0x7FFF_FFFF else v >> shamt
            return npc
    elif f3 == 6:
        def op() -> int:
            x[rd] = x[rs1] | uimm
            return npc
    else:
        def op() -> int:
            x[rd] = x[rs1] & uimm
            return npc
    return op


def _op(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    x, rd, rs1, rs2 = hart.x, d.rd(insn), d.rs1(insn), d.rs2(insn)
    key = (d.funct7(insn), d.funct3(insn))
    fn = ALU_RR.get(key)
    if fn is None:
        return None
    if rd == 0:
        return _nop(npc)
    if key == (0, 0) and 0 in (rs1, rs2):  # mv (c.mv is add rd, x0, rs2)
        return _move(x, rd, rs1 | rs2, npc)
    if key in ((0x20, 0), (0, 4), (0, 6)) and rs2 == 0:  # sub, xor, or with x0
        return _move(x, rd, rs1, npc)
    # The commonest operations are inlined; the rest call their semantic function.
    if key == (0, 0):
        def op() -> int:
            x[rd] = (x[rs1] + x[rs2]) & M
            return npc
    elif key == (0x20, 0):
        def op() -> int:
            x[rd] = (x[rs1] - x[rs2]) & M
            return npc
    elif key == (0, 4):
        def op() -> int:
            x[rd] = x[rs1] ^ x[rs2]
            return npc
    elif key == (0, 6):
        def op() -> int:
            x[rd] = x[rs1] | x[rs2]
            return npc
    elif key == (0, 7):
        def op() -> int:
            x[rd] = x[rs1] & x[rs2]
            return npc
    elif key == (0, 2):
        def op() -> int:
            a, b = x[rs1], x[rs2]
            if a < b:  # signed too, unless a is non-negative and b negative
                x[rd] = 0 if a < SIGN <= b else 1
            else:  # signed too, unless a is negative and b non-negative
                x[rd] = 1 if b < SIGN <= a else 0
            return npc
    elif key == (0, 3):
        def op() -> int:
            x[rd] = 1 if x[rs1] < x[rs2] else 0
            return npc
    elif key == (0, 1):
        def op() -> int:
            x[rd] = (x[rs1] << (x[rs2] & 31)) & M
            return npc
    elif key == (0, 5):
        def op() -> int:
            x[rd] = x[rs1] >> (x[rs2] & 31)
            return npc
    elif key == (1, 0):
        def op() -> int:
            x[rd] = (x[rs1] * x[rs2]) & M
            return npc
    elif key == (1, 3):
        def op() -> int:
            x[rd] = (x[rs1] * x[rs2]) >> 32
            return npc
    elif key == (1, 5):
        def op() -> int:
            b = x[rs2]
            x[rd] = x[rs1] // b if b else M
            return npc
    elif key == (1, 4):  # div: the usual case, both non-negative, is an unsigned division
        def op() -> int:
            a, b = x[rs1], x[rs2]
            x[rd] = a // b if a < SIGN and 0 < b < SIGN else div(a, b)
            return npc
    elif key == (1, 6):  # rem, likewise
        def op() -> int:
            a, b = x[rs1], x[rs2]
            x[rd] = a % b if a < SIGN and 0 < b < SIGN else rem(a, b)
            return npc
    elif key == (1, 7):
        def op() -> int:
            b = x[rs2]
            x[rd] = x[rs1] % b if b else x[rs1]
            return npc
    else:
        def op() -> int:
            x[rd] = fn(x[rs1], x[rs2])
            return npc
    return op


# --- control transfer ------------------------------------------------------------


def _jal(hart: Hart, insn: int, pc: int, npc: int) -> Op:
    x, rd, target = hart.x, d.rd(insn), (pc + d.imm_j(insn)) & M
    if rd == 0:
        return lambda: target

    def op() -> int:
        x[rd] = npc
        return target

    return op


def _jalr(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    if d.funct3(insn) != 0:
        return None
    x, rd, rs1, imm = hart.x, d.rd(insn), d.rs1(insn), d.imm_i(insn)
    if rd == 0:
        def op() -> int:
            return (x[rs1] + imm) & 0xFFFF_FFFE
    else:
        def op() -> int:
            target = (x[rs1] + imm) & 0xFFFF_FFFE
            x[rd] = npc
            return target
    return op


def _branch(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    x, rs1, rs2, f3 = hart.x, d.rs1(insn), d.rs2(insn), d.funct3(insn)
    t = (pc + d.imm_b(insn)) & M
    if f3 in (0, 1) and 0 in (rs1, rs2):  # beqz, bnez: a register against zero
        rs = rs1 | rs2
        if f3 == 0:
            def op() -> int:
                return npc if x[rs] else t
        else:
            def op() -> int:
                return t if x[rs] else npc
    elif f3 == 0:
        def op() -> int:
            return t if x[rs1] == x[rs2] else npc
    elif f3 == 1:
        def op() -> int:
            return t if x[rs1] != x[rs2] else npc
    elif f3 in (4, 5) and rs2 == 0:  # bltz, bgez: the sign bit
        if f3 == 4:
            def op() -> int:
                return t if x[rs1] > 0x7FFF_FFFF else npc
        else:
            def op() -> int:
                return npc if x[rs1] > 0x7FFF_FFFF else t
    elif f3 == 4:
        def op() -> int:
            a, b = x[rs1], x[rs2]
            if a < b:  # signed too, unless a is non-negative and b negative
                return npc if a < SIGN <= b else t
            return t if b < SIGN <= a else npc  # a negative and b not: a is below
    elif f3 == 5:
        def op() -> int:
            a, b = x[rs1], x[rs2]
            if a < b:
                return t if a < SIGN <= b else npc
            return npc if b < SIGN <= a else t
    elif f3 == 6:
        def op() -> int:
            return t if x[rs1] < x[rs2] else npc
    elif f3 == 7:
        def op() -> int:
            return t if x[rs1] >= x[rs2] else npc
    else:
        return None
    return op


# --- memory ----------------------------------------------------------------------

def _offsets_exact(base: int, size: int) -> bool:
    """Whether fast paths may work on the offset into RAM, `x[rs1] + (imm - base)`,
    without forming the address: one addition whose result is small, where
    `(x[rs1] + imm) & M` and `a - base` take CPython's slow multi-digit path on
    pointers above 2**30.  Exact when RAM is word-aligned (an offset is aligned
    when its address is) and ends within the 32-bit space (an address that wraps
    gives an offset below 0 or at least `size`); other RAM takes the slow path."""
    return not base & 3 and base + size <= 1 << 32


# funct3 -> (size, signed) for loads
LOADS = {0: (1, True), 1: (2, True), 2: (4, False), 4: (1, False), 5: (2, False)}
STORES = {0: 1, 1: 2, 2: 4}


def _load(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    kind = LOADS.get(d.funct3(insn))
    if kind is None:
        return None
    size, signed = kind
    x, rd, rs1, imm = hart.x, d.rd(insn), d.rs1(insn), d.imm_i(insn)
    ram, slow = hart.bus.ram, hart.load_slow
    base, limit, align = ram.base, ram.size, size - 1
    view = {(1, True): ram.s8, (1, False): ram.u8, (2, True): ram.s16,
            (2, False): ram.u16, (4, False): ram.u32}[kind]
    shift = size >> 1  # log2(size) for 1, 2, 4
    offset = imm - base

    # The access may fault, touch a device, be watched, need a PMP check, or RAM be odd.
    if rd == 0 or hart.checked or not _offsets_exact(base, limit):
        def op() -> int:
            value = slow((x[rs1] + imm) & M, size, signed)
            if rd:
                x[rd] = value
            return npc
    elif hart.watch_loads:  # a load from a watched granule is checked
        # Locals, not globals: the closure reads them as cheaply as a constant.
        flags, mask, granule, watched = ram.flags, M if size < 4 else -1, FLAG_SHIFT, FLAG_LOAD

        def op() -> int:
            o = x[rs1] + offset  # the offset in RAM, as below
            if 0 <= o < limit and not o & align and not flags[o >> granule] & watched:
                x[rd] = view[o >> shift] & mask
            else:
                x[rd] = slow((o + base) & M, size, signed)
            return npc
    elif size == 4:  # the fast paths go straight to the offset in RAM (_offsets_exact)
        def op() -> int:
            o = x[rs1] + offset
            if 0 <= o < limit and not o & 3:
                x[rd] = view[o >> 2]
            else:
                x[rd] = slow((o + base) & M, 4, False)
            return npc
    else:
        def op() -> int:
            o = x[rs1] + offset
            if 0 <= o < limit and not o & align:
                x[rd] = view[o >> shift] & M
            else:
                x[rd] = slow((o + base) & M, size, signed)
            return npc
    return op


def _store(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    size = STORES.get(d.funct3(insn))
    if size is None:
        return None
    x, rs1, rs2, imm = hart.x, d.rs1(insn), d.rs2(insn), d.imm_s(insn)
    ram, slow = hart.bus.ram, hart.store_slow
    base, limit, flags, align, granule = ram.base, ram.size, ram.flags, size - 1, FLAG_SHIFT
    view = {1: ram.u8, 2: ram.u16, 4: ram.u32}[size]
    shift, vmask = size >> 1, (1 << (8 * size)) - 1
    offset = imm - base

    if hart.checked or not _offsets_exact(base, limit):  # PMP may deny it, or odd RAM
        def checked() -> int:
            slow((x[rs1] + imm) & M, x[rs2], size)
            return npc
        return checked

    def op() -> int:
        o = x[rs1] + offset  # the offset in RAM, as in _load
        if 0 <= o < limit and not o & align and not flags[o >> granule]:
            view[o >> shift] = x[rs2] & vmask
        else:
            slow((o + base) & M, x[rs2], size)
        return npc

    return op


def _amo(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    if d.funct3(insn) != 2:
        return None
    x, rd, rs1, rs2, f5 = hart.x, d.rd(insn), d.rs1(insn), d.rs2(insn), insn >> 27
    if f5 == 0x02:  # LR.W
        if rs2 != 0:
            return None

        def op() -> int:
            a = x[rs1]
            value = hart.load_slow(a, 4, False)
            hart.reservation = a
            if rd:
                x[rd] = value
            return npc
        return op
    if f5 == 0x03:  # SC.W
        def op() -> int:
            a = x[rs1]
            if a & 3:
                raise Trap(Cause.STORE_MISALIGNED, a)
            ok = hart.reservation == a
            if ok:  # may raise NeedsSync or Trap: nothing has changed yet
                hart.store_slow(a, x[rs2], 4)
            hart.reservation = None
            if rd:
                x[rd] = 0 if ok else 1
            return npc
        return op
    fn = AMO.get(f5)
    if fn is None:
        return None

    def amo() -> int:
        a = x[rs1]
        if a & 3:
            raise Trap(Cause.STORE_MISALIGNED, a)
        old = hart.amo_load(a)
        hart.store_slow(a, fn(old, x[rs2]), 4)
        if rd:
            x[rd] = old
        return npc

    return amo


def _misc_mem(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    f3 = d.funct3(insn)
    if f3 == 0:  # FENCE: one hart, accesses are already in order
        return _nop(npc)
    if f3 == 1:  # FENCE.I: drop every predecoded instruction after this one
        def op() -> int:
            hart.flush_code()
            return npc
        return op
    return None


# --- system ----------------------------------------------------------------------


def _system(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    f3 = d.funct3(insn)
    if f3 == 0:
        return _privileged(hart, insn, pc, npc)
    if f3 == 4:
        return None
    rd, rs1, csr, kind = d.rd(insn), d.rs1(insn), insn >> 20, f3 & 3
    # csrrs/csrrc with x0 (or uimm 0) do not write; csrrw with rd=x0 does not read.
    writes = kind == 1 or rs1 != 0
    reads = kind != 1 or rd != 0
    machine_only = lowest_privilege(csr) == PRV_M
    user = hart.priv != PRV_M  # the context this op is decoded for (one cache per priv)
    if user and machine_only:
        return _illegal(insn)

    read = hart.csr_reader(csr, insn) if reads else None
    write = hart.csr_writer(csr, insn) if writes else None
    access = _csr_access(hart, insn, npc, read, write)
    if user:  # U-mode may use a counter only while mcounteren enables it
        plain = access

        def access() -> int:
            if not hart.user_csr_allowed(csr):
                raise Trap(Cause.ILLEGAL_INSN, insn)
            return plain()

    if not needs_sync(csr, writes):  # the commonest accesses stay in the batch
        return access

    def synced() -> int:
        if not hart.synced:
            raise NeedsSync
        return access()

    return synced


def _csr_access(hart: Hart, insn: int, npc: int, read: Callable[[], int] | None,
                write: Callable[[int], None] | None) -> Op:
    """The CSR instruction's effect (`read` None: it does not read, `write` None: it does
    not write); csrr and csrw, the commonest forms, in closures of their own."""
    x, rd, rs1, f3 = hart.x, d.rd(insn), d.rs1(insn), d.funct3(insn)
    immediate, kind = f3 & 4, f3 & 3  # kind: 1 write, 2 set, 3 clear
    if write is None and read is not None:  # csrr
        def op() -> int:
            value = read()
            if rd:
                x[rd] = value
            return npc
        return op
    if write is not None and read is None and not immediate:  # csrw
        def csrw() -> int:
            write(x[rs1])
            return npc
        return csrw

    def csrrx() -> int:
        src = rs1 if immediate else x[rs1]
        old = read() if read is not None else 0
        if write is not None:
            write((src if kind == 1 else (old | src) if kind == 2 else (old & ~src)) & M)
        if rd:
            x[rd] = old
        return npc

    return csrrx


def _privileged(hart: Hart, insn: int, pc: int, npc: int) -> Op | None:
    if insn == 0x0000_0073:  # ECALL: cause 8 from U, 11 from M
        def op() -> int:
            raise Trap(Cause.ECALL_U + hart.priv)
        return op
    if insn == d.EBREAK:
        def op() -> int:
            semihosting = hart.semihosting
            if semihosting is not None and npc - pc == 4 and is_semihosting_call(hart, pc):
                if not hart.synced:  # its clock calls read exact virtual time
                    raise NeedsSync
                return npc if semihosting.call(hart) else pc
            raise Trap(Cause.BREAKPOINT, pc)
        return op
    if insn == 0x3020_0073:  # MRET
        def op() -> int:
            if not hart.synced:
                raise NeedsSync
            return hart.mret(insn)
        return op
    if insn == 0x1050_0073:  # WFI
        def op() -> int:
            if not hart.synced:
                raise NeedsSync
            hart.wait_for_interrupt(insn)
            return npc
        return op
    return None


_FACTORIES: dict[int, Callable[[Hart, int, int, int], Op | None]] = {
    d.OP_LUI: _lui,
    d.OP_AUIPC: _auipc,
    d.OP_IMM: _op_imm,
    d.OP_OP: _op,
    d.OP_JAL: _jal,
    d.OP_JALR: _jalr,
    d.OP_BRANCH: _branch,
    d.OP_LOAD: _load,
    d.OP_STORE: _store,
    d.OP_AMO: _amo,
    d.OP_MISC_MEM: _misc_mem,
    d.OP_SYSTEM: _system,
}
