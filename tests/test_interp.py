"""The interpreter's specialised closures and its batching run loop.

The closures are specialised by hand (x0 as a source, the sign of an immediate, signed
compares by the sign bits): each form is checked here against a plain model of the
ISA written with Python's signed integers, on the values where such tricks go wrong
(0, ±1, the sign boundary, pointers above 2**31).  The run loop retires a batch of
ops at a time and counts it only when the batch ends: a guest that traps, reads the
cycle counter, is interrupted and misses the decode cache mid-batch must end in the
same state, byte for byte, whether it runs in one slice, in odd-sized slices or one
instruction at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import PASS_OR_FAIL
from emud.chardev import RingBackend
from emud.clock import VirtualClock
from emud.cpu import interp
from emud.cpu.csr import Cause
from emud.cpu.decode import OP_BRANCH, OP_IMM, OP_OP, enc_b, enc_i, enc_r, enc_s
from emud.cpu.hart import Hart
from emud.hw.clint import Clint
from emud.hw.hpet import HPET
from emud.hw.pl011 import PL011, PL011Luminary
from emud.hw.plic import Plic
from emud.loader import load_elf
from emud.machine import CLINT_BASE, Machine, RunState
from emud.memory import AddressSpace, Ram

M = 0xFFFF_FFFF
PC = 0x8000_0100
VALUES = (0, 1, 2, 5, 31, 32, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001, 0xFFFF_FFFF,
          0xFFFF_FFFE, 0x8000_1000, 0x1234_5678, 0xEDCB_A988)
IMMEDIATES = (0, 1, 3, 31, 2047, -1, -2, -16, -2048)


def signed(v: int) -> int:
    return v - (1 << 32) if v & 0x8000_0000 else v


def model_rr(f7: int, f3: int, a: int, b: int) -> int:
    """The RV32IM register-register result, from the spec's definitions."""
    sa, sb, sh = signed(a), signed(b), b & 31
    if f7 == 1:
        if f3 == 0:
            return sa * sb
        if f3 == 1:
            return (sa * sb) >> 32
        if f3 == 2:
            return (sa * b) >> 32
        if f3 == 3:
            return (a * b) >> 32
        if f3 in (4, 6):  # div, rem: round towards zero; x/0 = -1, x%0 = x; overflow
            if sb == 0:
                return -1 if f3 == 4 else a
            if sa == -(1 << 31) and sb == -1:
                return sa if f3 == 4 else 0
            q = abs(sa) // abs(sb) * (1 if (sa < 0) == (sb < 0) else -1)
            return q if f3 == 4 else sa - q * sb
        if sb == 0:  # divu, remu
            return -1 if f3 == 5 else a
        return a // b if f3 == 5 else a % b
    return {
        (0, 0): a + b, (0x20, 0): a - b, (0, 1): a << sh, (0, 2): int(sa < sb),
        (0, 3): int(a < b), (0, 4): a ^ b, (0, 5): a >> sh, (0x20, 5): sa >> sh,
        (0, 6): a | b, (0, 7): a & b,
    }[f7, f3]


def model_branch(f3: int, a: int, b: int) -> bool:
    return {0: a == b, 1: a != b, 4: signed(a) < signed(b), 5: signed(a) >= signed(b),
            6: a < b, 7: a >= b}[f3]


@pytest.fixture
def hart() -> Hart:
    return Hart(AddressSpace(Ram(0x8000_0000, 0x1_0000)), VirtualClock())


def run_op(hart: Hart, insn: int, regs: dict[int, int]) -> int:
    hart.x[:] = [0] * 32
    for r, v in regs.items():
        if r:
            hart.x[r] = v
    return interp.build(hart, insn, PC, 4)()


# Register choices: x0 as either source, both, the same register twice, rd = a source.
PATTERNS = ((5, 6, 7), (5, 0, 7), (5, 6, 0), (5, 0, 0), (5, 6, 6), (6, 6, 7), (0, 6, 7))


@pytest.mark.parametrize("f7,f3", [(0, f3) for f3 in range(8)] + [(0x20, 0), (0x20, 5)]
                         + [(1, f3) for f3 in range(8)])
def test_register_register_forms_match_the_model(hart: Hart, f7: int, f3: int) -> None:
    for rd, rs1, rs2 in PATTERNS:
        insn = enc_r(OP_OP, rd, f3, rs1, rs2, f7)
        for a in VALUES:
            for b in VALUES:
                av = a if rs1 else 0
                bv = (av if rs2 == rs1 else b) if rs2 else 0
                assert run_op(hart, insn, {rs1: av, rs2: bv}) == PC + 4
                expected = model_rr(f7, f3, av, bv) & M if rd else 0
                assert hart.x[rd] == expected, (f7, f3, rd, rs1, rs2, hex(av), hex(bv))


@pytest.mark.parametrize("f3", range(8))
def test_register_immediate_forms_match_the_model(hart: Hart, f3: int) -> None:
    kinds = [(0, imm) for imm in IMMEDIATES] if f3 not in (1, 5) else (
        [(0, s) for s in (0, 1, 7, 31)] + ([(0x20, s) for s in (0, 1, 7, 31)] if f3 == 5 else []))
    for f7, imm in kinds:
        for rd, rs1 in ((5, 6), (5, 0), (6, 6), (0, 6)):
            insn = enc_i(OP_IMM, rd, f3, rs1, imm | (f7 << 5))
            for a in VALUES:
                av = a if rs1 else 0
                assert run_op(hart, insn, {rs1: av}) == PC + 4
                expected = model_rr(f7, f3, av, imm & M) & M if rd else 0
                assert hart.x[rd] == expected, (f3, f7, imm, rd, rs1, hex(av))


@pytest.mark.parametrize("f3", (0, 1, 4, 5, 6, 7))
def test_branch_forms_match_the_model(hart: Hart, f3: int) -> None:
    offset = -64
    for _, rs1, rs2 in PATTERNS:
        insn = enc_b(OP_BRANCH, f3, rs1, rs2, offset)
        for a in VALUES:
            for b in VALUES:
                av = a if rs1 else 0
                bv = (av if rs2 == rs1 else b) if rs2 else 0
                taken = model_branch(f3, av, bv)
                assert run_op(hart, insn, {rs1: av, rs2: bv}) == (
                    PC + offset if taken else PC + 4), (f3, rs1, rs2, hex(av), hex(bv))


# A guest that leaves the interpreter's batches in every way: a decode miss (all of
# its code is cold on the first pass), CSR reads of the counters (NeedsSync), a
# misaligned load and an ecall (traps), and timer interrupts (a deadline ends a
# batch).  Each trap and interrupt stores mcycle and minstret as seen by its handler.
RECORD = 0x8000_8000
BATCH_GUEST = f"""
    .option norvc
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li s1, {RECORD:#x}
    li s2, {CLINT_BASE + 0x4000:#x}   # mtimecmp
    sw zero, 4(s2)
    li t0, 3                          # the first timer interrupt at 3 ticks (300 insns)
    sw t0, 0(s2)
    li t0, 0x80                       # MTIE
    csrw mie, t0
    csrsi mstatus, 8
    li s3, 40
loop:
    addi a0, a0, 3
    xor a1, a1, a0
    slli a2, a1, 2
    csrr a3, mcycle
    add a4, a3, a2
    li t0, 0x80008001
    lw t1, 0(t0)                      # misaligned: traps
    sub a5, a4, a0
    ecall
    mv a6, a5
    addi s3, s3, -1
    bnez s3, loop
    csrw mie, zero
{PASS_OR_FAIL}
    .balign 4
handler:
    csrr t0, mcycle
    sw t0, 0(s1)
    csrr t0, minstret
    sw t0, 4(s1)
    csrr t0, mcause
    sw t0, 8(s1)
    addi s1, s1, 12
    bltz t0, 2f                       # an interrupt: move the deadline on
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret
2:  lw t0, 0(s2)
    addi t0, t0, 2
    sw t0, 0(s2)
    mret
"""


def run_sliced(machine: Machine, slice_length: int) -> None:
    for _ in range(1_000_000):
        if machine.run_slice(slice_length) is RunState.POWEROFF:
            return
    raise AssertionError("the guest did not power off")


def state(machine: Machine) -> tuple[object, ...]:
    hart, ram = machine.hart, machine.bus.ram
    record = bytes(ram.data[RECORD - ram.base:RECORD - ram.base + 0x1000])
    return (machine.exit_code, machine.clock.icount, machine.clock.now_ns, hart.pc,
            tuple(hart.x), hart.mepc, hart.mcause, hart.instret_offset, record)


def test_batches_retire_exactly_as_single_steps(build_asm: Callable[[str], Path]) -> None:
    elf = build_asm(BATCH_GUEST)
    results = {}
    for slice_length in (1, 7, 1 << 20):
        machine = Machine(RingBackend(), accel="interp")
        machine.load(load_elf(elf))
        run_sliced(machine, slice_length)
        results[slice_length] = state(machine)
    assert results[1][0] == 0  # powered off through the syscon, not by a failure
    record = results[1][-1]
    assert isinstance(record, bytes)
    causes = [int.from_bytes(record[i + 8:i + 12], "little") for i in range(0, len(record), 12)]
    assert causes.count(4) == causes.count(11) == 40  # misaligned load, ecall
    assert causes.count(0x8000_0007) >= 5  # timer interrupts
    assert results[7] == results[1]
    assert results[1 << 20] == results[1]


# Counter reads around traps, all in cold code (every instruction a decode miss on
# the way): mcycle counts the trapping instruction's step, minstret does not.
HANDLER_LENGTH = 4  # the instructions of `handler` below, mret included
COUNTER_GUEST = f"""
    .option norvc
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li t0, 0x80008001
    csrr s1, mcycle
    csrr s2, minstret
    lw t1, 0(t0)                      # misaligned: traps
    csrr s3, mcycle
    csrr s4, minstret
    ecall
    addi a0, a0, 1
    addi a0, a0, 1
    csrr s5, mcycle
    csrr s6, minstret
{PASS_OR_FAIL}
    .balign 4
handler:
    csrr t2, mepc
    addi t2, t2, 4
    csrw mepc, t2
    mret
"""


@pytest.mark.parametrize("slice_length", (1, 3, 1 << 20))
def test_counters_count_each_instruction_once_across_traps(
        build_asm: Callable[[str], Path], slice_length: int) -> None:
    machine = Machine(RingBackend(), accel="interp")
    machine.load(load_elf(build_asm(COUNTER_GUEST)))
    run_sliced(machine, slice_length)
    x = machine.hart.x
    # csrr s2, the trapping lw (a step, not retired), the handler, csrr s3
    assert x[19] - x[9] == 2 + 1 + HANDLER_LENGTH
    assert x[20] - x[18] == 2 + HANDLER_LENGTH
    # csrr s4, ecall, the handler, two addi, csrr s5
    assert x[21] - x[19] == 2 + 1 + HANDLER_LENGTH + 2
    assert x[22] - x[20] == 2 + HANDLER_LENGTH + 2


@pytest.mark.parametrize("ram_base,base_value,offset", [
    (0xFFFF_0000, 0x8, -16),          # below 0: wraps to the top of the address space
    (0x0000_0000, 0xFFFF_FFFC, 8),    # above 2**32 - 1: wraps to the bottom
])
def test_loads_and_stores_wrap_their_address(ram_base: int, base_value: int,
                                             offset: int) -> None:
    """The fast paths add base and offset without `& M`; an address that wraps must
    still reach the RAM it wraps to."""
    hart = Hart(AddressSpace(Ram(ram_base, 0x1_0000)), VirtualClock())
    target = (base_value + offset) & M
    ram = hart.bus.ram
    for f3, size in ((2, 4), (1, 2), (4, 1)):  # lw, lh, lbu: each fast path
        ram.data[target - ram_base:target - ram_base + 4] = b"\x81\x92\xa3\xb4"
        assert run_op(hart, enc_i(0x03, 5, f3, 6, offset), {6: base_value}) == PC + 4
        assert hart.x[5] == {4: 0xB4A3_9281, 2: 0xFFFF_9281, 1: 0x81}[size]
    for f3, size in ((2, 4), (1, 2), (0, 1)):  # sw, sh, sb
        ram.data[target - ram_base:target - ram_base + 4] = bytes(4)
        insn = enc_s(0x23, f3, 6, 7, offset)
        assert run_op(hart, insn, {6: base_value, 7: 0x1122_3344}) == PC + 4
        assert ram.data[target - ram_base:target - ram_base + 4] == (
            b"\x44\x33\x22\x11"[:size] + bytes(4 - size))


@pytest.mark.parametrize("ram_base,ram_size,base_value,offset,cause", [
    # RAM past the top of the 32-bit space: an address that wraps to 4 is not in it
    (0xFFFF_F000, 0x2000, 0xFFFF_FFFC, 8, "access"),
    # RAM at an address that is not word-aligned: its offset 0 is a misaligned address
    (0x8000_0002, 0x1000, 0x8000_0000, 2, "misaligned"),
])
def test_odd_ram_takes_the_slow_path(ram_base: int, ram_size: int, base_value: int,
                                     offset: int, cause: str) -> None:
    """The fast paths work on the offset into RAM; where that would not be exact, the
    access must still fault as its address says."""
    hart = Hart(AddressSpace(Ram(ram_base, ram_size)), VirtualClock())
    hart.synced = True  # an access outside RAM goes to the bus, which has nothing there
    address = (base_value + offset) & M
    for insn, load in ((enc_i(0x03, 5, 2, 6, offset), True), (enc_s(0x23, 2, 6, 7, offset), False)):
        with pytest.raises(interp.Trap) as trap:
            run_op(hart, insn, {6: base_value, 7: 0x1122_3344})
        expected = {("access", True): Cause.LOAD_ACCESS, ("access", False): Cause.STORE_ACCESS,
                    ("misaligned", True): Cause.LOAD_MISALIGNED,
                    ("misaligned", False): Cause.STORE_MISALIGNED}[cause, load]
        assert (trap.value.cause, trap.value.tval) == (expected, address)


# Hot code that talks to the clock without leaving its batch: counter CSRs are read and
# written inline (the icount comes from the batch's steps left), mtime is an MMIO read
# (synced, after which the batch goes on), and a write to msip raises an interrupt that
# must be taken right after it.  Each pass records mcycle, mtime read just after it, and
# minstret; the msip handler records mepc.
CLOCK_RECORD = 0x8000_9000
CLOCK_GUEST = f"""
    .option norvc
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li s1, {CLOCK_RECORD:#x}
    li s2, {CLINT_BASE + 0xBFF8:#x}   # mtime
    li s4, {CLINT_BASE:#x}            # msip
    li t0, 0x8                        # MSIE
    csrw mie, t0
    csrsi mstatus, 8
    li t0, 1000
    csrw mcycle, t0                   # inline: the next read sees 1000 + 1
    csrr s5, mcycle
    li s3, 300
loop:
    csrr a0, mcycle
    lw a1, 0(s2)
    csrr a2, minstret
    csrw mscratch, a2
    csrr a3, mscratch
    sw a0, 0(s1)
    sw a1, 4(s1)
    sw a3, 8(s1)
    addi s1, s1, 12
    andi t0, s3, 63
    bnez t0, 1f
    li t0, 1
    sw t0, 0(s4)                      # msip: the interrupt comes before the next insn
after_msip:
    addi a4, a4, 1
1:  addi s3, s3, -1
    bnez s3, loop
{PASS_OR_FAIL}
    .balign 4
handler:
    sw zero, 0(s4)                    # msip cleared: lowers the interrupt
    csrr t1, mepc
    la t2, after_msip
    bne t1, t2, fail
    addi a5, a5, 1
    mret
"""


def run_clock_guest(elf: Path, accel: str, slice_length: int) -> Machine:
    machine = Machine(RingBackend(), accel=accel)
    machine.load(load_elf(elf))
    run_sliced(machine, slice_length)
    return machine


def test_clock_reads_inside_batches_are_exact(build_asm: Callable[[str], Path]) -> None:
    elf = build_asm(CLOCK_GUEST)
    machine = run_clock_guest(elf, "interp", 1 << 20)
    assert machine.exit_code == 0  # every msip interrupt was taken right after its store
    x, ram = machine.hart.x, machine.bus.ram
    assert x[21] == 1001  # s5: mcycle written inline, read by the next instruction
    assert x[15] == 4  # a5: the passes with s3 = 256, 192, 128 and 64 raised msip
    data = ram.data[CLOCK_RECORD - ram.base:]
    records = [[int.from_bytes(data[i + k:i + k + 4], "little") for k in (0, 4, 8)]
               for i in range(0, 300 * 12, 12)]
    offset = 1000 - 11  # mcycle - icount since the write: it is instruction 11 (from 0)
    for cycle, mtime, instret in records:
        icount = cycle - offset
        assert mtime == (icount + 1) // 100  # read one instruction later, 1 ns each
        assert instret == icount + 2  # minstret counts from reset, two instructions on
    steps = [b[0] - a[0] for a, b in pairwise(records)]
    # a pass: 13 instructions; one that raises msip: 3 more and the 7 of the handler
    assert sorted(set(steps)) == [13, 13 + 3 + 7]


@pytest.mark.parametrize("accel,slice_length", [("interp", 1), ("interp", 5),
                                                ("translate", 1 << 20)])
def test_clock_guest_is_the_same_however_run(build_asm: Callable[[str], Path], accel: str,
                                             slice_length: int) -> None:
    elf = build_asm(CLOCK_GUEST)
    reference = run_clock_guest(elf, "interp", 1 << 20)
    other = run_clock_guest(elf, accel, slice_length)
    ram, ram2 = reference.bus.ram, other.bus.ram
    assert (other.clock.icount, other.clock.now_ns, tuple(other.hart.x), bytes(ram2.data)) == (
        reference.clock.icount, reference.clock.now_ns, tuple(reference.hart.x),
        bytes(ram.data))


def test_csr_forms_read_and_write_like_csr_read_and_write(hart: Hart) -> None:
    """csrrw/csrrs/csrrc and their immediate forms, through each specialised closure."""
    base = 0x8000_0000
    for f3, rs1, rd in [(1, 5, 6), (1, 5, 0), (2, 5, 6), (2, 0, 6), (3, 5, 6), (5, 9, 6),
                        (6, 9, 6), (7, 9, 0), (6, 0, 6)]:
        hart.mscratch = 0xF0F0_0F0F
        hart.x[5] = 0x1234_00FF
        hart.x[6] = 0
        insn = 0x340 << 20 | rs1 << 15 | f3 << 12 | rd << 7 | 0x73
        assert interp.build(hart, insn, base, 4)() == base + 4
        src = rs1 if f3 & 4 else (hart.x[5] if rs1 == 5 else 0)
        old = 0xF0F0_0F0F
        kind = f3 & 3
        written = kind == 1 or rs1 != 0
        expected = (src if kind == 1 else old | src if kind == 2 else old & ~src & M
                    ) if written else old
        assert hart.mscratch == expected, (f3, rs1, rd)
        assert hart.x[6] == (old if rd == 6 else 0), (f3, rs1, rd)


def test_only_devices_whose_reads_change_nothing_are_read_inside_a_batch() -> None:
    """A read of the CLINT (its read is its peek) or the HPET (a read only logs) runs in
    the batch; the UART's pops its receive FIFO and the PLIC's claims an interrupt, so
    those end the batch (NeedsSync) as any device store does."""
    assert Clint.quiet_reads and HPET.quiet_reads
    assert not PL011.quiet_reads and not PL011Luminary.quiet_reads and not Plic.quiet_reads


def test_fetch_at_the_end_of_ram(hart: Hart) -> None:
    """decode reads a whole word when it lies in RAM, else halfword by halfword: an
    instruction in the last bytes decodes, one that runs past the end faults where
    its second half would be."""
    ram = hart.bus.ram
    end = ram.base + ram.size
    addi = enc_i(OP_IMM, 5, 0, 0, 7)  # addi t0, zero, 7
    ram.data[ram.size - 4:] = addi.to_bytes(4, "little")
    hart.decode(end - 4)()
    assert hart.x[5] == 7
    ram.data[ram.size - 2:] = (0x4289).to_bytes(2, "little")  # c.li t0, 2
    hart.decode(end - 2)()
    assert hart.x[5] == 2
    ram.data[ram.size - 2:] = (addi & 0xFFFF).to_bytes(2, "little")  # 32 bits, half in RAM
    with pytest.raises(interp.Trap) as trap:
        hart.decode(end - 2)
    assert (trap.value.cause, trap.value.tval) == (Cause.INSN_ACCESS, end)
