"""The `translate` accelerator runs every program exactly like the reference interpreter.

Each test runs the same program twice, `--accel interp` and `--accel translate`,
and compares the whole machine afterwards: registers, pc, CSRs, icount, virtual
time, RAM, serial output, exit code, plus whatever the program logged (mepc and
minstret at every trap, so interrupts must arrive at the same instruction).
The translator gets a low hot threshold so that even short loops run as
regions, and each test checks that regions really ran.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, boot, serial_text
from emud.chardev import RingBackend
from emud.clock import VirtualClock
from emud.cpu import decode as d
from emud.cpu.debug import WATCH, Watchpoint
from emud.cpu.hart import Hart
from emud.cpu.translate import (
    COPIES,
    HEAD,
    STRETCH,
    Config,
    Discovery,
    Emitter,
    Insn,
    Translator,
    _layout,
    _signed,
    entry_key,
    translatable,
)
from emud.loader import load_elf
from emud.machine import Machine
from emud.memory import AddressSpace, Ram

Build = Callable[[str], Path]


def snapshot(machine: Machine) -> dict[str, Any]:
    h = machine.hart
    return {
        "x": list(h.x), "pc": h.pc, "waiting": h.waiting,
        "csrs": (h.mstatus, h.mie, h.mip, h.mtvec, h.mscratch, h.mepc, h.mcause, h.mtval,
                 h.cycle_offset, h.instret_offset, h.reservation),
        "icount": machine.clock.icount, "now": machine.clock.now_ns,
        "ram": hashlib.sha256(machine.ram.data).hexdigest(),
        "serial": serial_text(machine), "exit": machine.exit_code,
    }


def translator(machine: Machine) -> Translator:
    accel = machine.hart.accel
    assert isinstance(accel, Translator)
    return accel


def both(image: Path, run: Callable[[Machine], object], hot: int = 2,
         ram_size: int = 16 << 20) -> tuple[dict[str, Any], Machine]:
    """Run `image` on both accelerators; the snapshots must agree.  Returns the translated one."""
    snaps = []
    for accel in ("interp", "translate"):
        machine = Machine(RingBackend(), accel=accel, ram_size=ram_size)
        if accel == "translate":  # translated at once, and kept: no tiering
            translator(machine).hot = hot
            translator(machine).payback = translator(machine).review = 0
        machine.load(load_elf(image))
        run(machine)
        snaps.append(snapshot(machine))
    assert snaps[0] == snaps[1]
    assert translator(machine).regions, "nothing was translated: the test proves nothing"
    return snaps[1], machine


def until_poweroff(max_insns: int | None = None) -> Callable[[Machine], object]:
    return lambda machine: machine.run_until_poweroff(max_insns)


def in_odd_slices(total: int, seed: int = 1) -> Callable[[Machine], object]:
    """Slices of random lengths (the same on both runs): budgets end anywhere in a region."""
    def run(machine: Machine) -> None:
        rng = random.Random(seed)
        while machine.clock.icount < total and machine.exit_code is None:
            machine.run_slice(rng.choice((1, 2, 3, 7, 50, 333, 5000)))
    return run


# --- the committed images ---------------------------------------------------------------


@pytest.mark.parametrize("image", ["hello", "traps", "hpet_timers"])
def test_images_match_the_interpreter(image: str) -> None:
    snap, _ = both(IMAGES / f"{image}.elf", until_poweroff(5_000_000))
    assert snap["exit"] == 0


def test_counter_matches_the_interpreter() -> None:
    """counter.elf runs forever: compare after 300k instructions."""
    snap, _ = both(IMAGES / "counter.elf", until_poweroff(300_000))
    assert snap["icount"] == 300_000 and snap["serial"].count(".") > 10


def test_compute_matches_the_interpreter() -> None:
    snap, machine = both(IMAGES / "compute.elf", until_poweroff(2_000_000), hot=16)
    assert snap["icount"] == 2_000_000


def test_compute_in_odd_slices_matches_the_interpreter() -> None:
    both(IMAGES / "compute.elf", in_odd_slices(300_000))


def test_uart_echo_with_input_matches_the_interpreter() -> None:
    def run(machine: Machine) -> None:
        machine.run_until_poweroff(max_insns=200_000)
        machine.serial.feed(b"hello, translated world\nq")
        machine.run_until_poweroff(max_insns=1_000_000)

    snap, _ = both(IMAGES / "uart_echo.elf", run)
    assert snap["exit"] == 0


# --- interrupts, MMIO, faults -------------------------------------------------------------

PROLOGUE = """
    .equ MTIMECMP, 0x02004000
    .equ MTIME, 0x0200bff8
    .equ SYSCON, 0x00100000
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    la gp, log
    la s3, data
"""
POWEROFF = """
    li t0, SYSCON
    li t1, 0x5555
    sw t1, 0(t0)
    j .
"""
DATA = """
    .data
    .align 4
log: .space 4096
data: .space 1024
"""
# The end of a test program: power off, a trap handler that spins, the data.
END = POWEROFF + """
handler:
    j handler
""" + DATA


def log_words(machine: Machine, count: int) -> list[int]:
    base = machine.image.symbols["log"] if machine.image else 0
    raw = machine.bus.read_bytes(base, 4 * count)
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


def test_timer_interrupts_arrive_at_the_same_instruction(build_asm: Build) -> None:
    """The handler logs mepc and minstret at each of 60 CLINT interrupts, re-arming the timer
    from inside the handler (a deadline armed in the middle of a run); some arrive while
    interrupts are masked and must be taken right after the csrsi that unmasks them."""
    elf = build_asm(PROLOGUE + """
    li s2, 60
    li t0, MTIME
    lw t1, 0(t0)
    addi t1, t1, 37
    li t0, MTIMECMP
    sw zero, 4(t0)
    sw t1, 0(t0)
    li t0, 0x80
    csrs mie, t0
    csrsi mstatus, 8
loop:
    csrci mstatus, 8        # a critical section: the interrupt waits for its end
    addi s1, s1, 1
    andi t2, s1, 255
    slli t2, t2, 2
    add t3, s3, t2
    lw t4, 0(t3)
    add t4, t4, s1
    sw t4, 0(t3)
    csrsi mstatus, 8        # taken right here, before the next instruction
    xor s4, s4, t4
    bltu t2, s1, 1f
    mul s5, s4, s1
1:  bnez s2, loop
""" + POWEROFF + """
handler:
    csrr t5, mepc
    sw t5, 0(gp)
    csrr t5, minstret
    sw t5, 4(gp)
    addi gp, gp, 8
    addi s2, s2, -1
    li t5, MTIME
    lw t6, 0(t5)
    andi a0, s1, 31
    add t6, t6, a0
    addi t6, t6, 3
    li t5, MTIMECMP
    sw t6, 0(t5)
    mret
""" + DATA)
    snap, machine = both(elf, until_poweroff(3_000_000))
    assert snap["exit"] == 0
    log = log_words(machine, 120)
    mepcs, counts = log[0::2], log[1::2]
    assert all(counts) and counts == sorted(counts) and len(set(mepcs)) > 3


def test_mmio_loads_in_the_middle_of_a_block(build_asm: Build) -> None:
    elf = build_asm(PROLOGUE + """
    li t0, MTIME
    li a1, MTIMECMP
    li s2, 3000
loop:
    addi s1, s1, 3
    lw t1, 0(t0)
    add s4, s4, t1
    xor s5, s5, s1
    lw t2, 0(a1)
    add s5, s5, t2
    addi s2, s2, -1
    bnez s2, loop
""" + END)
    snap, machine = both(elf, until_poweroff(1_000_000))
    assert snap["exit"] == 0 and snap["x"][20] != 0


@pytest.mark.parametrize(("start", "step", "end", "ram_size"), [
    ("0x81000000 - 4000", "add", 0x8100_0000, 16 << 20),  # off the end of RAM
    ("0x81800000 - 4000", "add", 0x8180_0000, 24 << 20),  # (a size that is not 2**n)
    ("0x80000000 + 3996", "sub", 0x7FFF_FFFC, 16 << 20),  # below its start
    ("0x80000000 + 3996", "sub", 0x7FFF_FFFC, 24 << 20),
])
def test_fault_in_the_middle_of_a_block_is_precise(build_asm: Build, start: str, step: str,
                                                   end: int, ram_size: int) -> None:
    """A hot loop walks out of RAM: the load faults with mepc at it, and the
    instructions before it in the same block have retired."""
    elf = build_asm(PROLOGUE + f"""
    li s3, {start}
loop:
    addi s1, s1, 1
    slli t2, s1, 2
    {step} t3, s3, t2
    addi s4, s4, 7
fault:
    lw t4, 0(t3)
    add s5, s5, t4
    j loop
""" + """
handler:
    csrr t5, mepc
    sw t5, 0(gp)
    csrr t5, mcause
    sw t5, 4(gp)
    csrr t5, mtval
    sw t5, 8(gp)
""" + POWEROFF + DATA)
    snap, machine = both(elf, until_poweroff(100_000), ram_size=ram_size)
    assert machine.image is not None
    mepc, mcause, mtval = log_words(machine, 3)
    assert (mepc, mcause, mtval) == (machine.image.symbols["fault"], 5, end)
    assert snap["x"][9] == 1000 and snap["x"][20] == 7000  # s1, s4 of the faulting iteration


def test_misaligned_store_in_the_middle_of_a_block(build_asm: Build) -> None:
    elf = build_asm(PROLOGUE + """
    li s2, 200
loop:
    addi s1, s1, 1
    andi t2, s1, 7
    add t3, s3, t2
    sh s1, 0(t3)
    addi s2, s2, -1
    bnez s2, loop
""" + POWEROFF + """
handler:
    csrr t5, mepc
    addi t5, t5, 4
    csrw mepc, t5
    csrr t5, mcause
    add s6, s6, t5
    mret
""" + DATA)
    snap, _ = both(elf, until_poweroff(1_000_000))
    assert snap["x"][22] == 6 * 100  # every odd address traps (cause 6)


def test_calls_and_returns_inside_a_region(build_asm: Build) -> None:
    """A function called from inside a loop and after it: its return (from inside the
    function's own loop) continues in the region, at a block outside that Python loop."""
    elf = build_asm(PROLOGUE + """
    li s2, 300
top:
    li s1, 0
inner:
    mv a0, s1
    jal f
    add s4, s4, a0
    addi s1, s1, 1
    li t1, 7
    blt s1, t1, inner
    mv a0, s2
    jal f
    add s5, s5, a0
    addi s2, s2, -1
    bnez s2, top
""" + POWEROFF + """
f:                          # the next multiple of 8 above a0, with the ret inside its loop
    addi a0, a0, 1
    andi t2, a0, 7
    bnez t2, 1f
    ret
1:  addi a1, a1, 1
    j f
handler:
    j handler
""" + DATA)
    def run(machine: Machine) -> None:
        if machine.hart.accel is not None:  # one region from `top`, the inner loop nested
            assert machine.image is not None
            translator(machine).translate(machine.image.symbols["top"])
        in_odd_slices(100_000)(machine)

    snap, _ = both(elf, run, hot=1000)
    assert snap["exit"] == 0
    assert snap["x"][20] == 300 * sum((i // 8 + 1) * 8 for i in range(7))
    assert snap["x"][21] == sum((n // 8 + 1) * 8 for n in range(1, 301))



def switch_program(cases: int) -> str:
    """A bytecode-style loop: `head` loads a case number, jumps through a table (jr) to
    one of `cases` small cases, each of which jumps back to the shared `tail`.  Every
    16th step case 0 rewrites the immediate of its own `patch` instruction."""
    body = []
    for n in range(cases):
        body.append(f"case{n}:")
        if n == 0:
            body += ["    andi t2, s2, 15", "    bnez t2, 1f", "    lw t1, 0(s7)",
                     "    li t2, 0x100000", "    add t1, t1, t2", "    sw t1, 0(s7)", "1:",
                     "patch:", "    addi s5, s5, 1"]
        else:
            reg = f"s{4 + n % 3}"
            body += [f"    xori {reg}, {reg}, {n * 37 % 2048}", f"    addi s8, s8, {n}"]
        body.append("    j tail")
    table = "\n".join(f"    .word case{n}" for n in range(cases))
    return PROLOGUE + f"""
    la s7, patch
    la s9, table
    li s2, 3000
    li s10, 1
    .option norvc
head:
    li t0, 1103515245           # an LCG picks the case
    mul s10, s10, t0
    addi s10, s10, 1013
    srli t0, s10, 16
    li t1, {cases}
    remu t0, t0, t1
    slli t0, t0, 2
    add t0, t0, s9
    lw t0, 0(t0)
    jr t0
""" + "\n".join(body) + """
tail:
    addi s2, s2, -1
    bnez s2, head
""" + POWEROFF + """
handler:
    j handler
    .align 2
table:
""" + table + "\n" + DATA


@pytest.mark.parametrize("slices", [False, True])
def test_a_switch_loop_reached_through_jr_matches_the_interpreter(
        build_asm: Build, slices: bool) -> None:
    """Regions entered from a jalr's target chain into each other, leave when the budget
    runs out inside any of them (odd slices), and the case that rewrites its own code
    drops exactly its regions: the same state as the interpreter."""
    elf = build_asm(switch_program(24))
    run = in_odd_slices(200_000, seed=3) if slices else until_poweroff(1_000_000)
    snap, machine = both(elf, run, hot=4)
    assert slices or snap["exit"] == 0
    assert machine.image is not None
    assert machine.image.symbols["case5"] in translator(machine).regions


def test_a_shared_loop_head_is_not_copied_into_every_case(build_asm: Build) -> None:
    """With tiering as in a plain run, the loop head and tail that all cases share are
    held by a few regions (COPIES), not by one region per case, and none of the short
    regions that go on into another region is demoted to the interpreter."""
    elf = build_asm(switch_program(96))
    machine = boot(elf, accel="translate")
    machine.run_until_poweroff(max_insns=2_000_000)
    assert machine.exit_code == 0
    assert machine.image is not None
    tr, symbols = translator(machine), machine.image.symbols
    cases = [symbols[f"case{n}"] for n in range(1, 96)]
    assert sum(pc in tr.regions for pc in cases) > 80
    # Regions made while the head's own region is under review (its first 32 calls)
    # copy it too: a few more than COPIES, far fewer than the 95 cases.
    assert len(tr.code[symbols["head"]][1]) <= COPIES + 8
    assert not tr.demoted & {symbols["head"], symbols["tail"], *cases}

# --- self-modifying code ----------------------------------------------------------------


@pytest.mark.parametrize("fence", ["", "fence.i"])
def test_self_modifying_code(build_asm: Build, fence: str) -> None:
    """Every 64 iterations the loop bumps the immediate of its own first instruction."""
    elf = build_asm(PROLOGUE + f"""
    la s7, patch
    li s2, 1000
    .option norvc
    .align 2
loop:
patch:
    addi s5, s5, 1
    addi s1, s1, 1
    andi t0, s1, 63
    bnez t0, 1f
    lw t1, 0(s7)
    li t2, 0x100000
    add t1, t1, t2
    sw t1, 0(s7)
    {fence}
1:  addi s2, s2, -1
    bnez s2, loop
""" + END)
    snap, _ = both(elf, until_poweroff(1_000_000))
    assert snap["exit"] == 0
    assert snap["x"][21] == sum(1 + i // 64 for i in range(1000))


def test_stores_next_to_code_keep_regions() -> None:
    """Data on a code page (compute's lcg_state) must not drop the regions of that page."""
    machine = boot(IMAGES / "compute.elf", accel="translate")
    machine.run_until_poweroff(max_insns=3_000_000)
    # A region still under review is its wrapper, which the review's end replaces with
    # the region itself: the same region.
    regions = {pc: inspect.unwrap(f) for pc, f in translator(machine).regions.items()}
    machine.run_until_poweroff(max_insns=1_000_000)
    now = translator(machine).regions
    assert all(pc in now and inspect.unwrap(now[pc]) is f for pc, f in regions.items())


# --- breakpoints --------------------------------------------------------------------------


def breakpoint_stops(elf: Path, symbol: str, warmup: int,
                     count: int) -> tuple[list[tuple[list[tuple[int, int, int]], dict[str, Any]]],
                                          Machine]:
    """On each accelerator (translate hot at 2): run `warmup` instructions, set a breakpoint
    at `symbol`, resume `count` times; (pc, icount, s4) at each stop and the final
    snapshot, interp's then translate's, and the translated machine."""
    runs = []
    for accel in ("interp", "translate"):
        machine = boot(elf, accel=accel)
        if accel == "translate":
            translator(machine).hot = 2
        machine.run_until_poweroff(max_insns=warmup)
        assert machine.image is not None
        machine.hart.set_breakpoint(machine.image.symbols[symbol], True)
        stops = []
        for _ in range(count):  # each resume runs the stopped instruction, then on to the next stop
            machine.run_slice()
            stop = machine.hart.debug_stop
            assert stop is not None
            stops.append((stop.pc, machine.clock.icount, machine.hart.x[20]))
        runs.append((stops, snapshot(machine)))
    return runs, machine


def test_breakpoint_in_a_translated_loop_stops_there(build_asm: Build) -> None:
    elf = build_asm(PROLOGUE + """
loop:
    addi s1, s1, 1
target:
    addi s4, s4, 2
    j loop
handler:
    j handler
""" + DATA)
    runs, machine = breakpoint_stops(elf, "target", 10_000, 10)
    assert machine.image is not None
    target = machine.image.symbols["target"]
    assert runs[0] == runs[1]
    assert {pc for pc, _, _ in runs[0][0]} == {target}
    # The loop stays translated with the breakpoint set: its region leaves before target.
    t = translator(machine)
    assert t.regions and target not in t.code and target in t.exits


SAVES = PROLOGUE + """
loop:
    addi s1, s1, 1
    sw s1, 0(s3)            # one test for the six stores: a window of 16 bytes holds
    sw s1, 4(s3)            # the first four, the others test their own granules
    sw s1, 12(s3)
    sw s1, 8(s3)
    sw s1, 24(s3)
    sw s1, 40(s3)
    lw s4, 12(s3)
    lw s5, 40(s3)
    j loop
handler:
    j handler
""" + DATA


@pytest.mark.parametrize("offset", [0, 4, 8, 12, 24, 40])
def test_a_watchpoint_on_any_store_of_a_group_stops_at_it(build_asm: Build, offset: int) -> None:
    """Stores at one register's offsets share one address test (_group); a write
    watchpoint on any of their words stops at that store, as the interpreter does,
    and the loop stays translated (only the watched granule is flagged)."""
    elf = build_asm(SAVES)
    runs = []
    for accel in ("interp", "translate"):
        machine = boot(elf, accel=accel)
        if accel == "translate":
            translator(machine).hot = 2
        machine.run_until_poweroff(max_insns=5_000)
        data = machine.hart.x[19]
        machine.hart.add_watchpoint(Watchpoint(data + offset, 4, WATCH))
        stops = []
        for _ in range(4):
            machine.run_slice()
            stop = machine.hart.debug_stop
            assert stop is not None and stop.addr == data + offset
            stops.append((stop.pc, machine.clock.icount, machine.hart.x[9]))
        runs.append((stops, snapshot(machine)))
    assert runs[0] == runs[1]
    assert translator(machine).regions


@pytest.mark.parametrize("step", [4, 8, 16, -4, -8, -16])
@pytest.mark.parametrize("offsets", [(0, 4, 8, 12), (0, -4, -8, -12), (0, -4, 8, -12)])
@pytest.mark.parametrize("ram_size", [16 << 20, (16 << 20) + 4096])
def test_a_group_reaching_out_of_ram_faults_at_the_access_outside(
        build_asm: Build, step: int, offsets: tuple[int, ...], ram_size: int) -> None:
    """Loads at a register's offsets share one test (_group); as the register walks to
    either end of RAM (of a power-of-two size, whose test is a mask, or not), the first
    load outside it takes the access fault, precisely (mepc, mtval), on both
    accelerators."""
    loads = "\n".join(f"    lw s{4 + k}, {off}(a0)" for k, off in enumerate(offsets))
    elf = build_asm(PROLOGUE + f"""
loop:
{loads}
    add s9, s4, s7
    add a0, a0, a1
    j loop
handler:
    j handler
""" + DATA)
    runs = []
    for accel in ("interp", "translate"):
        machine = boot(elf, accel=accel, ram_size=ram_size)
        if accel == "translate":
            translator(machine).hot = 2
        base, end = machine.ram.base, machine.ram.base + machine.ram.size
        start = end - 64 if step > 0 else base + 64
        machine.hart.x[10:12] = [start, step & 0xFFFF_FFFF]
        machine.run_until_poweroff(max_insns=400)
        runs.append(snapshot(machine))
    assert runs[0] == runs[1]
    at = start  # where the walk leaves RAM: the first load outside it, in program order
    while all(base <= at + off < end for off in offsets):
        at += step
    outside = next(at + off for off in offsets if not base <= at + off < end)
    h = machine.hart
    assert h.mcause == 5 and h.mtval == outside and h.x[10] == at
    assert translator(machine).regions


@pytest.mark.parametrize("branch", ["bne s1, s5, spin", "beq s1, s5, latch"])
def test_a_branch_whose_both_ways_loop_is_not_a_latch_loop(build_asm: Build,
                                                           branch: str) -> None:
    """A branch to itself with a latch on its fall-through, or to the latch that is also
    its fall-through: every way goes round again.  The guest spins on, the same on
    both accelerators, wherever the budget ends."""
    elf = build_asm(PROLOGUE + f"""
    li s5, 3
spin:
    addi s1, s1, 1
    andi s1, s1, 7
    {branch}
latch:
    addi s4, s4, 1
    j spin
handler:
    j handler
""" + DATA)
    snap, _ = both(elf, in_odd_slices(20_000), hot=20)  # hot once the latch has run
    assert snap["exit"] is None and snap["x"][20] > 0


COUNTED = PROLOGUE + """
    mv a0, s3
    li t0, 0
    li t3, 64
    li t4, 73
fill:                       # a counted loop too: t0 counts, a0 steps
    mul t1, t0, t4
    sw t1, 0(a0)
    addi a0, a0, 4
    addi t0, t0, 1
    bne t0, t3, fill
    li s2, 40
again:
    andi t2, s2, 15
    addi t2, t2, 1
    slli t2, t2, 2          # 1 to 16 words this time round
    mv a0, s3
    add a2, s3, t2
    addi a1, s3, 512
copy:                       # up, both pointers stepping
    lw t0, 0(a0)
    sw t0, 0(a1)
    addi a0, a0, 4
    addi a1, a1, 4
    bne a0, a2, copy
    addi a1, s3, 768
    add a2, a1, t2
mark:                       # a pointer that is a value too: it keeps its register
    sw a1, 0(a1)
    addi a1, a1, 4
    bne a1, a2, mark
    mv a3, s3
    add a0, s3, t2
sum:                        # down, stepping before the loads
    addi a0, a0, -4
    lw t1, 512(a0)
    lw t5, 768(a0)
    add s4, s4, t1
    xor s4, s4, t5
    bne a0, a3, sum
    addi s2, s2, -1
    bnez s2, again
""" + END


def test_counted_loops_match_the_interpreter(build_asm: Build) -> None:
    """Loops that count a register to a bound run their rounds at once when a guard on
    entry allows (_counted); with budgets that end anywhere the guard often does not,
    and the loop runs tested: the same state as the interpreter either way."""
    elf = build_asm(COUNTED)
    for slices in (in_odd_slices(60_000), lambda m: m.run_until_poweroff(max_insns=60_000)):
        snap, machine = both(elf, slices)
        assert snap["exit"] == 0 and snap["x"][20] != 0


SCANS = PROLOGUE + """
    li s2, 1000             # rounds
    li s6, 12345            # an LCG: the array's words, then a pivot a round
    li s9, 1103515245
    mv a0, s3
    li t0, 64
fill:
    mul s6, s6, s9
    addi s6, s6, 123
    sw s6, 0(a0)
    addi a0, a0, 4
    addi t0, t0, -1
    bnez t0, fill
again:
    mul s6, s6, s9
    addi s6, s6, 123
    ori s5, s6, 1           # the pivot: of either sign, never INT_MIN
    srai s8, s6, 24         # a byte pivot: -128..127
    srli t3, s6, 26
    slli t3, t3, 2
    add t3, t3, s3          # where the scans start
    li t4, 0x7fffffff       # A and E stop at INT_MAX
    sw t4, 256(s3)
    mv a0, t3
scanA:                      # value < pivot, the pivot as rs2
    lw t1, 0(a0)
    addi a0, a0, 4
    blt t1, s5, scanA
    add s4, s4, a0
    mv a0, t3
scanE:                      # the loop writes both operands
    lw t1, 0(a0)
    addi a0, a0, 4
    mv s7, s5
    blt t1, s7, scanE
    add s4, s4, a0
    li t4, 0x80000000       # the others stop at INT_MIN
    sw t4, 256(s3)
    mv a0, t3
scanB:                      # pivot < value, the pivot as rs1
    lw t1, 0(a0)
    addi a0, a0, 4
    blt s5, t1, scanB
    xor s4, s4, a0
    mv a0, t3
scanC:                      # value >= pivot, through a latch on the taken side
    lw t1, 0(a0)
    bge t1, s5, latchC
    j outC
latchC:
    addi a0, a0, 4
    j scanC
outC:
    add s4, s4, a0
    mv a0, t3
scanD:                      # pivot >= value leaves, a latch on the fall-through
    lw t1, 0(a0)
    bge s5, t1, outD
    addi a0, a0, 4
    j scanD
outD:
    xor s4, s4, a0
    li t4, -1               # F stops at byte 255
    sw t4, 256(s3)
    mv a0, t3
scanF:                      # an unsigned byte (never negative) < a signed pivot
    lbu t1, 0(a0)
    addi a0, a0, 1
    blt t1, s8, scanF
    xor s4, s4, a0
    addi s2, s2, -1
    bnez s2, again
""" + END


def test_signed_scans_match_the_interpreter(build_asm: Build) -> None:
    """Loops (bare, or through a latch on either side) that leave by a signed compare
    of loaded words of both signs with a pivot of either sign, on either side of
    it: each scan ends where the interpreter's does, wherever the budget ends."""
    elf = build_asm(SCANS)
    for slices in (in_odd_slices(150_000), lambda m: m.run_until_poweroff()):
        snap, machine = both(elf, slices, hot=4)
        assert snap["x"][20] != 0
    assert snap["exit"] == 0
    assert machine.image is not None
    scans = [machine.image.symbols[f"scan{c}"] for c in "ABCDEF"]
    assert all(pc in translator(machine).code for pc in scans)


def test_a_jump_out_of_two_loops_matches_the_interpreter(build_asm: Build) -> None:
    """A jump from an inner loop to a block before the loop around it leaves both
    (_after_loop passes it on), a jump back to the middle loop's head only the inner
    one: the same state as the interpreter, wherever the budget ends."""
    elf = build_asm(PROLOGUE + """
    li s2, 5
    li t3, 9
    li t4, 6
outer:
    addi s1, s1, 1
    li t0, 0
mid:
    addi t0, t0, 1
    li t1, 0
inner:
    addi t1, t1, 1
    add t2, t1, s1
    andi t2, t2, 15
    add s4, s4, t2
    beq t2, s2, outer       # out of both loops
    bltu t2, t0, mid        # out of the inner loop, back to the middle one's head
    blt t1, t3, inner
    blt t0, t4, mid
    j outer
handler:
    j handler
""" + DATA)
    symbols = load_elf(elf).symbols

    def run(seed: int) -> Callable[[Machine], object]:
        def go(machine: Machine) -> None:
            if isinstance(machine.hart.accel, Translator):  # one region holding all three
                assert machine.hart.accel.translate(symbols["outer"]) is not None
                machine.hart.accel.hot = 1 << 30  # and no other
            in_odd_slices(40_000, seed)(machine)
        return go
    for seed in (1, 2, 3):
        snap, _ = both(elf, run(seed))
        assert snap["x"][20] != 0


def test_a_watchpoint_in_a_counted_loop_stops_at_its_store(build_asm: Build) -> None:
    """The guard finds the watched granule among the stores' flags: the loop runs
    tested, and stops at the store to the watched word, as the interpreter does."""
    elf = build_asm(COUNTED)
    runs = []
    for accel in ("interp", "translate"):
        machine = boot(elf, accel=accel)
        if accel == "translate":  # translated at once, and kept
            translator(machine).hot = 2
            translator(machine).payback = translator(machine).review = 0
        machine.run_until_poweroff(max_insns=3_000)
        watched = machine.hart.x[19] + 512 + 20
        machine.hart.add_watchpoint(Watchpoint(watched, 4, WATCH))
        stops = []
        for _ in range(5):
            machine.run_slice()
            stop = machine.hart.debug_stop
            assert stop is not None and stop.addr == watched
            stops.append((stop.pc, machine.clock.icount, machine.hart.x[11]))
        runs.append((stops, snapshot(machine)))
    assert runs[0] == runs[1]
    assert translator(machine).regions


@pytest.mark.parametrize(("start", "step", "gap", "outside"), [
    (0x8100_0000 - 8000, 8, 4, 0x8100_0000),
    (0x8100_0000 - 8000, 8, 8016, 0x8100_0000),
    (0x8000_0000 + 8000, -8, -8008, 0x7FFF_FFF8),
])
def test_a_counted_loop_out_of_ram_faults_there(build_asm: Build, start: int, step: int,
                                               gap: int, outside: int) -> None:
    """A pointer stepping by 8 from 8000 bytes inside an end of RAM towards a bound `gap`
    bytes on: at 4 it never meets it (the guard sees the rounds do not divide), at 8016
    it would, past the end (the guard sees the last round's load outside RAM), and so
    at -8008 below the start (its loads come after its steps); each time the loop runs
    tested, and its load faults at the first address outside RAM."""
    elf = build_asm(PROLOGUE + f"""
    li a0, {start}
    li a2, {start + gap}
walk:
    addi a0, a0, {step}
    lw t1, 0(a0)
    add s4, s4, t1
    bne a0, a2, walk
    .align 2                 # mtvec takes aligned handlers only
""" + END)
    snap, machine = both(elf, lambda m: m.run_until_poweroff(max_insns=20_000))
    h = machine.hart
    assert h.mcause == 5 and h.mtval == outside and snap["pc"] == h.mtvec


# --- random programs ------------------------------------------------------------------------

CODE, DATA_AREA, TRAP = 0x8000_0000, 0x8000_4000, 0x8000_6000
BASE, LOOP = 3, 4  # gp: data base, tp: loop counter; nothing else writes them
DEST = [r for r in range(32) if r not in (BASE, LOOP, 30, 31)]  # t5/t6 belong to the handler
R_OPS = [(f7, f3) for f7 in (0, 1) for f3 in range(8)] + [(0x20, 0), (0x20, 5)]
LOADS, STORES = [0, 1, 2, 4, 5], [0, 1, 2]
# The trap handler logs mcause, mepc and minstret (through t6), skips the instruction, mret.
HANDLER = [
    d.enc_i(d.OP_SYSTEM, 30, 2, 0, 0x342), d.enc_s(d.OP_STORE, 2, 31, 30, 0),
    d.enc_i(d.OP_SYSTEM, 30, 2, 0, 0x341), d.enc_s(d.OP_STORE, 2, 31, 30, 4),
    d.enc_i(d.OP_IMM, 30, 0, 30, 4), d.enc_i(d.OP_SYSTEM, 0, 1, 30, 0x341),
    d.enc_i(d.OP_SYSTEM, 30, 2, 0, 0xB02), d.enc_s(d.OP_STORE, 2, 31, 30, 8),
    d.enc_i(d.OP_IMM, 31, 0, 31, 12), 0x3020_0073,
]


def random_program(rng: random.Random) -> list[int]:
    """A loop (tp times) over random ALU, load/store (some misaligned), and forward branches."""
    body: list[int] = []
    for _ in range(rng.randint(5, 40)):
        kind = rng.random()
        rd, rs1, rs2 = rng.choice(DEST), rng.randrange(32), rng.randrange(32)
        if kind < 0.35:
            f7, f3 = rng.choice(R_OPS)
            body.append(d.enc_r(d.OP_OP, rd, f3, rs1, rs2, f7))
        elif kind < 0.6:
            f3 = rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
            imm = rng.randrange(32) | (rng.choice((0, 0x400)) if f3 == 5 else 0) \
                if f3 in (1, 5) else rng.randrange(-2048, 2048)
            body.append(d.enc_i(d.OP_IMM, rd, f3, rs1, imm))
        elif kind < 0.65:
            body.append(d.enc_u(rng.choice((d.OP_LUI, d.OP_AUIPC)), rd, rng.randrange(1 << 32)))
        elif kind < 0.8:
            off = rng.randrange(0, 256) if rng.random() < 0.9 else rng.randrange(-4096, 4096)
            body.append(d.enc_i(d.OP_LOAD, rd, rng.choice(LOADS), BASE, off))
        elif kind < 0.92:
            body.append(d.enc_s(d.OP_STORE, rng.choice(STORES), BASE, rs2, rng.randrange(256)))
        else:
            skip = rng.randint(1, 3)
            body.append(d.enc_b(d.OP_BRANCH, rng.choice([0, 1, 4, 5, 6, 7]), rs1, rs2,
                                4 * (skip + 1)))
            body += [d.enc_i(d.OP_IMM, rng.choice(DEST), 0, rng.randrange(32), 1)
                     for _ in range(skip)]
    loop = [*body, d.enc_i(d.OP_IMM, LOOP, 0, LOOP, -1)]
    return [*loop, d.enc_b(d.OP_BRANCH, 1, LOOP, 0, -4 * len(loop)), d.enc_j(d.OP_JAL, 0, 0)]


def run_random(program: list[int], seed: int, accel: bool, ram_size: int) -> tuple[object, ...]:
    hart = Hart(AddressSpace(Ram(CODE, ram_size)), VirtualClock())
    if accel:
        translator = Translator(hart)
        translator.hot = 1
        translator.payback = translator.review = 0
        hart.accel = translator
    code = b"".join(i.to_bytes(4, "little") for i in program)
    hart.bus.write_bytes(CODE, code)
    hart.bus.write_bytes(TRAP, b"".join(i.to_bytes(4, "little") for i in HANDLER))
    rng = random.Random(seed)
    hart.bus.write_bytes(DATA_AREA, rng.randbytes(4096))
    hart.reset(CODE)
    hart.mtvec = TRAP
    hart.x[1:] = [rng.randrange(1 << 32) for _ in range(31)]
    hart.x[BASE], hart.x[LOOP], hart.x[31] = DATA_AREA, rng.randint(3, 12), DATA_AREA + 0x1000
    for budget in [rng.choice((1, 3, 17, 100, 1000)) for _ in range(40)]:
        hart.run(budget)
    if accel:
        assert hart.accel is not None and translator.regions
    return (list(hart.x), hart.pc, hart.mepc, hart.mcause, hart.mtval, hart.clock.icount,
            bytes(hart.bus.ram.data[0x4000:0x6000]))


@pytest.mark.parametrize("chunk", range(4))
def test_random_programs_match_the_interpreter(chunk: int) -> None:
    ram_size = 96 * 1024 if chunk == 3 else 64 * 1024  # address checks differ (not 2**n)
    for seed in range(chunk * 100, chunk * 100 + 100):
        program = random_program(random.Random(seed))
        assert run_random(program, seed, False, ram_size) == \
            run_random(program, seed, True, ram_size), seed



NARROW = [5, 6, 7, 8, 9, 10, 11, 12]  # few registers: each result feeds the next ones


def bounded_program(rng: random.Random) -> list[int]:
    """Like random_program, but shaped for what emission infers of values: narrow values
    (masks, shifts, byte loads) that then add, shift, multiply, divide and compare;
    pointers made from the data base plus such a value; the same address accessed again
    (skipped checks); forward branches (blocks entered from one block only)."""
    body: list[int] = []
    for _ in range(rng.randint(8, 40)):
        kind = rng.random()
        rd, rs1, rs2 = rng.choice(NARROW), rng.choice(NARROW), rng.choice(NARROW)
        if kind < 0.15:  # a narrow value
            body.append(rng.choice([
                d.enc_i(d.OP_IMM, rd, 7, rs1, rng.choice((1, 255, 0x7FF, -1, -256))),
                d.enc_i(d.OP_IMM, rd, 5, rs1, rng.randrange(32) | rng.choice((0, 0x400))),
                d.enc_i(d.OP_LOAD, rd, rng.choice((4, 5)), BASE, rng.randrange(0, 256, 2)),
                d.enc_u(d.OP_LUI, rd, rng.choice((0xFFFFF000, 0x7FFFF000, 0x80000000))),
            ]))
        elif kind < 0.45:
            f7, f3 = rng.choice(R_OPS)
            body.append(d.enc_r(d.OP_OP, rd, f3, rs1, rs2, f7))
        elif kind < 0.65:
            f3 = rng.choice([0, 0, 1, 2, 3, 4, 6])
            imm = rng.randrange(32) if f3 == 1 else rng.choice(
                (rng.randrange(-2048, 2048), 2047, -2048, -1, 1))
            body.append(d.enc_i(d.OP_IMM, rd, f3, rs1, imm))
        elif kind < 0.75:  # a pointer: data base plus a (maybe narrow) value
            body.append(d.enc_r(d.OP_OP, rd, 0, BASE, rs1, 0))
        elif kind < 0.9:  # accesses through a pointer, the same address twice or more
            base = rng.choice((BASE, rs1))
            off = rng.randrange(-8, 64) & ~rng.choice((0, 1, 3))
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:
                    body.append(d.enc_i(d.OP_LOAD, rd, rng.choice(LOADS), base, off))
                else:
                    body.append(d.enc_s(d.OP_STORE, rng.choice(STORES), base, rs2, off))
        else:
            skip = rng.randint(1, 3)
            body.append(d.enc_b(d.OP_BRANCH, rng.choice([0, 1, 4, 5, 6, 7]), rs1,
                                rng.choice((rs2, 0)), 4 * (skip + 1)))
            body += [d.enc_i(d.OP_IMM, rng.choice(NARROW), 0, rng.choice(NARROW), 1)
                     for _ in range(skip)]
    loop = [*body, d.enc_i(d.OP_IMM, LOOP, 0, LOOP, -1)]
    return [*loop, d.enc_b(d.OP_BRANCH, 1, LOOP, 0, -4 * len(loop)), d.enc_j(d.OP_JAL, 0, 0)]


@pytest.mark.parametrize("chunk", range(3))
def test_programs_on_narrow_values_match_the_interpreter(chunk: int) -> None:
    ram_size = 96 * 1024 if chunk == 2 else 64 * 1024
    for seed in range(chunk * 100, chunk * 100 + 100):
        program = bounded_program(random.Random(seed))
        assert run_random(program, seed, False, ram_size) == \
            run_random(program, seed, True, ram_size), seed


# --- tiering --------------------------------------------------------------------------------

LOOP_WITH_COLD_PATH = PROLOGUE + """
    li s2, 200
loop:
    addi s1, s1, 3
    xor s4, s4, s1
    addi s5, s5, 1
    bltz s5, cold            # never taken (s5 counts up from 0): cold code
back:
    addi s2, s2, -1
    bnez s2, loop
""" + POWEROFF + """
cold:
    addi s6, s6, 1
    addi s6, s6, 1
    j back
handler:
    j handler
""" + DATA


def test_a_hot_region_holds_only_code_the_interpreter_ran(build_asm: Build) -> None:
    elf = build_asm(LOOP_WITH_COLD_PATH)
    snap, machine = both(elf, until_poweroff(100_000), hot=16)
    assert snap["exit"] == 0 and snap["x"][22] == 0
    assert machine.image is not None
    symbols, tr = machine.image.symbols, translator(machine)
    assert symbols["back"] in tr.regions and symbols["loop"] in tr.code
    assert symbols["cold"] not in tr.code
    tr.translate(symbols["back"])  # asked directly: everything reachable
    assert symbols["cold"] in tr.code


def test_an_entry_waits_until_it_has_run_enough_for_its_region(build_asm: Build) -> None:
    """payback x region size instructions, counted as visits x block length.  The loop
    is two blocks, `loop` (4 instructions) and `back` (2); the region from either holds
    both (6, not the code that has not run), so with payback 40, `loop` needs
    40 * 6 / 4 = 60 visits and `back` 120: `loop` gets the region."""
    elf = build_asm(LOOP_WITH_COLD_PATH)
    machine = boot(elf)
    assert machine.image is not None
    tr, symbols = translator(machine), machine.image.symbols
    loop, back = symbols["loop"], symbols["back"]
    tr.payback = 40
    machine.run_until_poweroff(max_insns=8 + 30 * 6)  # 30 iterations: hot, not paid
    assert not tr.regions and tr.needed == {loop: 60, back: 120}
    machine.run_until_poweroff(max_insns=80 * 6)
    assert list(tr.regions) == [loop] and tr.heat[loop] == 60 and tr.heat[back] < 120


def interpreter_runs(hart: Hart) -> list[tuple[int, int]]:
    """From now on, (pc, instructions asked) of each run of the interpreter."""
    asked: list[tuple[int, int]] = []
    interpret = hart.interpret

    def recorded(budget: int) -> int:
        asked.append((hart.pc, budget))
        return interpret(budget)
    hart.interpret = recorded  # type: ignore[method-assign]
    return asked


def test_regions_that_run_few_instructions_per_call_go_back_to_the_interpreter(
        build_asm: Build) -> None:
    """The loop's region leaves at once, before its MMIO load, every time: it runs no
    instruction per call, less than entering it costs, so the interpreter gets it back."""
    elf = build_asm(PROLOGUE + """
    li t0, MTIME
    li s2, 500
loop:
    lw t1, 0(t0)
    add s4, s4, t1
    addi s2, s2, -1
    bnez s2, loop
""" + END)
    snaps = []
    for review in (0, 32):
        machine = boot(elf)
        tr = translator(machine)
        tr.review = review
        asked = interpreter_runs(machine.hart)
        machine.run_until_poweroff(max_insns=100_000)
        snaps.append(snapshot(machine))
        assert machine.image is not None
        loop = machine.image.symbols["loop"]
        assert (loop in tr.demoted) == bool(review)
        assert (loop in tr.regions) == (not review)
        # Demoted, the loop runs in the interpreter for stretches, not block by block.
        assert ((loop, STRETCH) in asked) == bool(review)
    assert snaps[0] == snaps[1]


@pytest.mark.parametrize("where", ["case5", "tail", "head"])
def test_a_breakpoint_at_a_jr_target_or_shared_code_stops_there(
        build_asm: Build, where: str) -> None:
    """Set after the switch loop is translated, at a case (reached by jr), at the tail
    or at the head (which regions may leave to instead of holding): every stop comes at
    the same pc and icount as in the interpreter."""
    runs, machine = breakpoint_stops(build_asm(switch_program(96)), where, 30_000, 5)
    assert machine.image is not None
    symbols, tr = machine.image.symbols, translator(machine)
    assert runs[0] == runs[1]
    assert {pc for pc, _, _ in runs[0][0]} == {symbols[where]}
    # Most cases still run translated, with the breakpoint set.
    assert sum(symbols[f"case{n}"] in tr.regions for n in range(96)) > 40

@pytest.mark.parametrize("chained", [False, True])
def test_a_short_region_that_goes_on_into_another_is_not_demoted(
        build_asm: Build, chained: bool) -> None:
    """The review counts a call that went on into another region (not back to the run
    loop) as long enough, however few instructions it ran itself."""
    machine = boot(build_asm(LOOP_WITH_COLD_PATH))
    assert machine.image is not None
    tr, loop = translator(machine), machine.image.symbols["loop"]
    assert tr.translate(loop) is not None
    region = inspect.unwrap(tr.regions[loop])  # what the review wrapper calls
    for _ in range(tr.review):
        tr._review(loop, region, 2, chained)
    assert (loop in tr.regions) == chained and (loop in tr.demoted) != chained
    if chained:  # kept: called directly from now on, not through the wrapper
        assert tr.regions[loop] is region

# --- the persistent cache hook ----------------------------------------------------------------


class MemoryCache:
    """A CodeCache in a dict, counting its hits."""

    def __init__(self) -> None:
        self.values: dict[bytes, Any] = {}
        self.hits = 0

    @property
    def codes(self) -> list[types.CodeType]:
        """The code of each record."""
        return [v[2] for v in self.values.values() if isinstance(v, tuple) and len(v) == 3]

    def get(self, key: bytes) -> object:
        value = self.values.get(key)
        self.hits += value is not None
        return value

    def put(self, key: bytes, value: object) -> None:
        self.values[key] = value


class Counted:
    """Counts of one translated run: emissions, discoveries, interpreted instructions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.emitted = self.discovered = self.interpreted = 0
        source, discover, interpret = Emitter.source, Translator._discover, Hart.interpret

        def counted_source(emitter: Emitter, found: Discovery) -> str:
            self.emitted += 1
            return source(emitter, found)

        def counted_discover(tr: Translator, *args: Any, **kwargs: Any) -> Any:
            self.discovered += 1
            return discover(tr, *args, **kwargs)

        def counted_interpret(hart: Hart, budget: int) -> int:
            done = interpret(hart, budget)
            self.interpreted += done
            return done
        monkeypatch.setattr(Emitter, "source", counted_source)
        monkeypatch.setattr(Translator, "_discover", counted_discover)
        monkeypatch.setattr(Hart, "interpret", counted_interpret)


def cached_run(cache: MemoryCache, image: Path, monkeypatch: pytest.MonkeyPatch,
               setup: Callable[[Machine], object] | None = None,
               max_insns: int = 1_000_000) -> tuple[dict[str, Any], Translator, Counted]:
    """A translated run of `image` with `cache`, counted."""
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        machine = Machine(RingBackend())
        machine.hart.accel = tr = Translator(machine.hart, cache)
        machine.load(load_elf(image))
        if setup is not None:
            setup(machine)
        machine.run_until_poweroff(max_insns=max_insns)
    return snapshot(machine), tr, counted


def test_a_cache_hit_runs_the_stored_code_and_emits_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of an image that ran before finds its regions in the cache at their entries'
    first visits: it emits (almost) nothing, and the interpreter runs less
    than half of the cold run's warm-up.  Regions made that early can change where later
    ones start, so the second run may make a few of its own; the third finds them all."""
    cache = MemoryCache()
    first, _, cold = cached_run(cache, IMAGES / "compute.elf", monkeypatch)
    second, _, warm = cached_run(cache, IMAGES / "compute.elf", monkeypatch)
    stored, hits = len(cache.values), cache.hits
    third, tr, hot = cached_run(cache, IMAGES / "compute.elf", monkeypatch)
    assert first == second == third
    assert cold.emitted >= 10 and warm.emitted <= cold.emitted // 10
    assert hot.emitted == 0 and len(cache.values) == stored
    assert max(warm.interpreted, hot.interpreted) < cold.interpreted // 2
    assert cache.hits - hits == len(tr.regions)
    stored_functions = {c for code in cache.codes for c in code.co_consts
                        if isinstance(c, types.CodeType)}
    assert all(inspect.unwrap(f).__code__ in stored_functions for f in tr.regions.values())


# A loop whose instruction at `patched` lies past the bytes an entry's record key holds.
RECALLED_LOOP = PROLOGUE + """
    li s2, 300
loop:
    addi s1, s1, 100
    addi s1, s1, 100
    addi s1, s1, 100
    addi s1, s1, 100
    addi s1, s1, 100
patched:
    addi s4, s4, 100
    addi s2, s2, -1
    bnez s2, loop
""" + END


def interpreted(image: Path, setup: Callable[[Machine], object] | None = None
                ) -> dict[str, Any]:
    machine = Machine(RingBackend(), accel="interp")
    machine.load(load_elf(image))
    if setup is not None:
        setup(machine)
    machine.run_until_poweroff(max_insns=1_000_000)
    return snapshot(machine)


def test_a_record_of_other_code_is_not_recalled(
        build_asm: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instruction changed inside a recorded region, past the bytes its record's key
    holds: the record does not match RAM, so the region is discovered and emitted again
    from the code now there, and the run agrees with the interpreter."""
    image = build_asm(RECALLED_LOOP)
    at = load_elf(image).symbols["patched"]
    cache = MemoryCache()
    cached_run(cache, image, monkeypatch)
    _, _, warm = cached_run(cache, image, monkeypatch)
    assert warm.emitted == 0  # recalled: the test below is of a record that does not match

    def patch(machine: Machine) -> None:  # addi s4, s4, 100 -> addi s4, s4, 200
        machine.hart.bus.debug_write(at, d.enc_i(d.OP_IMM, 20, 0, 20, 200).to_bytes(4, "little"))
    snap, tr, counted = cached_run(cache, image, monkeypatch, setup=patch)
    assert snap == interpreted(image, patch) and snap["x"][20] == 300 * 200
    assert counted.emitted >= 1 and any(at in tr.members[e][0] for e in tr.regions)


def test_a_record_with_a_breakpoint_inside_is_not_recalled(
        build_asm: Build, monkeypatch: pytest.MonkeyPatch) -> None:
    """A breakpoint set at an instruction of a recorded region: that region is not
    recalled (it would run through the breakpoint), and the run stops there as the
    interpreter does."""
    image = build_asm(RECALLED_LOOP)
    at = load_elf(image).symbols["patched"]
    cache = MemoryCache()
    cached_run(cache, image, monkeypatch)

    def stop_at(machine: Machine) -> None:
        machine.hart.set_breakpoint(at, True)
    snaps = []
    for accel in ("interp", "translate"):
        machine = Machine(RingBackend(), accel=accel)
        if accel == "translate":
            machine.hart.accel = Translator(machine.hart, cache)
        machine.load(load_elf(image))
        stop_at(machine)
        for _ in range(3):  # three stops at the breakpoint, resumed each time
            machine.run_slice()
            assert machine.hart.debug_stop is not None and machine.hart.pc == at
            snaps.append(snapshot(machine))
    assert snaps[:3] == snaps[3:]


Spoil = Callable[[Any], object]
SPOILED: dict[str, Spoil] = {  # what a record is made into
    "none": lambda record: None,
    "an int": lambda record: 7,
    "bytes": lambda record: b"junk",
    "empty": lambda record: (),
    "too long": lambda record: (*record, 1),
    "strings": lambda record: ("listed", "runs", record[2]),
    "no code": lambda record: (*record[:2], b"code"),
    "no instructions": lambda record: ((), *record[1:]),
    "short instructions": lambda record: (tuple(i[:2] for i in record[0]), *record[1:]),
    "instructions not a tuple": lambda record: (5, *record[1:]),
    "runs of ints": lambda record: (
        record[0], tuple((a, 5) for a, _ in record[1]), record[2]),
    "runs before RAM": lambda record: (record[0], ((-4, b"\0"),), record[2]),
    "runs of fewer instructions": lambda record: (record[0][:1], *record[1:]),
    "no entry instruction": lambda record: (  # consistent, but for the other pcs
        record[0][1:], ((record[1][0][0] + record[0][0][2], record[1][0][1][record[0][0][2]:]),
                        *record[1][1:]), record[2]),
    "runs of other bytes": lambda record: (
        record[0], tuple((a, bytes(len(b))) for a, b in record[1]), record[2]),
}


@pytest.mark.parametrize("spoil", SPOILED.values(), ids=SPOILED.keys())
def test_a_record_that_is_not_one_is_ignored(
        build_asm: Build, monkeypatch: pytest.MonkeyPatch, spoil: Spoil) -> None:
    """Whatever a record holds (the cache checks only that its file is whole), a recall
    of it either matches RAM and finds code, or does nothing; the run agrees with the
    interpreter."""
    image = build_asm(RECALLED_LOOP)
    cache = MemoryCache()
    cached_run(cache, image, monkeypatch)
    originals = dict(cache.values)
    for key, record in originals.items():
        cache.values[key] = spoil(record)
    snap, tr, _ = cached_run(cache, image, monkeypatch)
    assert snap == interpreted(image) and tr.recalled and tr.regions
    for entry in tr.regions:  # each depends on all of its code, as when it was made
        listed = originals[entry_key(tr.emitter.config, entry, tr._head(entry))][0]
        assert tr.members[entry][0] == [pc for pc, _, length in listed if length]


def test_entry_key_names_the_config_the_entry_and_its_first_bytes() -> None:
    config = Config(0x8000_0000, 16 << 20)
    key = entry_key(config, 0x8000_0000, b"\x13" * HEAD)
    assert entry_key(Config(*config), 0x8000_0000, b"\x13" * HEAD) == key
    variants = {entry_key(config._replace(watch_loads=True), 0x8000_0000, b"\x13" * HEAD),
                entry_key(config._replace(base=0x4000_0000), 0x8000_0000, b"\x13" * HEAD),
                entry_key(config._replace(size=24 << 20), 0x8000_0000, b"\x13" * HEAD),
                entry_key(config, 0x8000_0002, b"\x13" * HEAD),
                entry_key(config, 0x8000_0000, b"\x13" * (HEAD - 1) + b"\x93")}
    assert len(variants) == 5 and key not in variants


def test_emission_reads_only_its_inputs() -> None:
    """Two emitters with the same config emit the same source for the same code; a RAM
    size that changes the address checks changes it."""
    lw = Insn(0x8000_0000, d.enc_i(d.OP_LOAD, 11, 2, 10, 0), 4)
    jal = Insn(0x8000_0004, d.enc_j(d.OP_JAL, 0, -4), 4)
    found = Discovery(lw.pc, (lw.pc,), (), ((lw.pc, lw), (jal.pc, jal)))
    config = Config(0x8000_0000, 16 << 20)
    assert Emitter(config).source(found) == Emitter(Config(*config)).source(found)
    assert Emitter(config).source(found) != Emitter(config._replace(size=24 << 20)).source(found)


# --- constant folding -------------------------------------------------------------------------


def test_discovery_test_of_translatable_agrees_with_emission() -> None:
    """translate.translatable (discovery's test) holds exactly where _body has lines,
    for every major opcode, funct3 and the funct7 values that name operations."""
    emitter = Emitter(Config(0x8000_0000, 16 << 20))
    seen = set()
    for op in range(0, 128, 4):
        for f3 in range(8):
            for f7 in (0, 1, 0x20, 0x21, 0x7F):
                w = f7 << 25 | 5 << 20 | 6 << 15 | f3 << 12 | 7 << 7 | op | 3
                body = emitter._body(Insn(0x8000_0000, w, 4))
                assert translatable(w) == (body is not None), hex(w)
                seen.add(body is not None)
    assert seen == {True, False}


def emitted(code: list[int]) -> str:
    """The source of the one-block region of `code` at the start of 16 MiB of RAM."""
    return emitted_blocks(list[int | None](code), [0])


def test_layout_keeps_the_innermost_loop_together() -> None:
    """A branch's target goes right after it, unless its fall-through is on the shorter
    way back to it: then the fall-through does, and the loop's blocks stay together
    before the exit (quicksort's swap after its scans, not after the code that follows
    the partition).  Calls keep their order, whatever their return's way back."""
    # 0 -> 1; 1: branch to 2 (the exit, on to 4 and round an outer loop) or fall to 3;
    # 3 -> 1; 4 -> 0
    successors = {0: [1], 1: [2, 3], 2: [4], 3: [1], 4: [0]}
    assert _layout(0, successors, {1}) == [0, 1, 3, 2, 4]
    assert _layout(0, successors, set()) == [0, 1, 2, 4, 3]  # not a branch: a call's order
    # Taken on the way back: the target stays right after.
    successors = {0: [1], 1: [3, 2], 2: [4], 3: [1], 4: [0]}
    assert _layout(0, successors, {1}) == [0, 1, 3, 2, 4]


def test_signed_compares_agree_with_the_signed_order() -> None:
    """Every form _signed picks (two registers, a constant on either side, of either
    sign) gives the signed order of the 32-bit values, edges included."""
    edges = [0, 1, 5, 0x3FFF_FFFF, 0x4000_0000, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001,
             0xFFFF_FFFE, 0xFFFF_FFFF]
    rng = random.Random(7)
    values = edges + [rng.randrange(1 << 32) for _ in range(20)]

    def signed(v: int) -> int:
        return v - (1 << 32) if v >> 31 else v

    for a in values:
        for b in values:
            for ge in (False, True):
                want = signed(a) >= signed(b) if ge else signed(a) < signed(b)
                forms = [("p", "q"), (str(a), "q"), ("p", str(b))]
                for left, right in forms:
                    expr = _signed(ge, left, right)
                    assert eval(expr, {}, {"p": a, "q": b}) is want, (expr, a, b)


def test_constants_fold_within_a_block() -> None:
    """li a0, 0x12345678 (lui + addi) becomes one assignment; an operation on a known
    register uses the value; the exits still see every register written."""
    source = emitted([d.enc_u(d.OP_LUI, 10, 0x12345 << 12), d.enc_i(d.OP_IMM, 10, 0, 10, 0x678),
                      d.enc_r(d.OP_OP, 11, 0, 10, 12, 0), d.enc_j(d.OP_JAL, 0, -12)])
    assert "x10 = 305419896" in source and f"x10 = {0x12345 << 12}" not in source
    assert "x11 = 305419896 + x12" in source and "x[10] = x10" in source


def test_folded_constants_around_exits_match_the_interpreter(build_asm: Build) -> None:
    """Constants written before an MMIO load (which leaves the region) must be in their
    registers when the interpreter runs it; rewritten ones after it."""
    elf = build_asm(PROLOGUE + """
    li t0, MTIME
    li s2, 400
loop:
    li a0, 0x12345678
    li a0, 0x0badf00d
    slli a1, a0, 3
    srai a2, a0, 5
    lw t1, 0(t0)
    sltiu a3, a1, -1
    li a0, -7
    mul a4, a0, a2
    divu a5, a4, a0
    add s4, s4, a5
    xor s5, s5, a4
    sub s6, s6, a3
    add s7, s7, t1
    addi s2, s2, -1
    bnez s2, loop
""" + END)
    snap, _ = both(elf, in_odd_slices(20_000))
    assert snap["exit"] == 0 and snap["x"][22] == -400 & 0xFFFF_FFFF and snap["x"][23] != 0


def test_what_is_known_of_values_drops_tests_that_cannot_fail() -> None:
    """A byte loaded, shifted and added to a pointer that passed an address test cannot
    wrap; a second access at the same address skips the test (a store keeps the flag
    test); a signed compare of non-negative values is the unsigned one.  Any write to a
    register forgets what was known of it."""
    source = emitted([
        d.enc_i(d.OP_LOAD, 10, 4, 11, 8),      # lbu a0, 8(a1): a1 is now a RAM address
        d.enc_i(d.OP_IMM, 10, 1, 10, 2),       # slli a0, a0, 2: at most 1020, no mask
        d.enc_r(d.OP_OP, 12, 0, 11, 10, 0),    # add a2, a1, a0: cannot pass 2**32
        d.enc_i(d.OP_LOAD, 13, 2, 11, 8),      # lw a3, 8(a1): the test above covers it
        d.enc_s(d.OP_STORE, 2, 11, 13, 8),     # sw a3, 8(a1): only the flag test
        d.enc_i(d.OP_IMM, 11, 0, 11, 4),       # addi a1, a1, 4: still inside 32 bits
        d.enc_i(d.OP_LOAD, 14, 2, 11, 4),      # lw a4, 4(a1): a1 changed, tested again
        d.enc_r(d.OP_OP, 15, 0, 14, 10, 0),    # add a5, a4, a0: a4 is any word, wraps
        d.enc_i(d.OP_IMM, 16, 5, 13, 1),       # srli a6, a3, 1: under 2**31
        d.enc_b(d.OP_BRANCH, 4, 10, 16, -36),  # blt a0, a6: both non-negative
    ])
    body = source.split("while True:", 1)[1]
    assert "x10 = x10 << 2" in body and "x12 = x11 + x10\n" in body + "\n"
    assert body.count("if o & -16777216:") == 1  # the lbu
    assert body.count("if o & -16777213:") == 2  # the first lw, and the one after the addi
    assert body.count("if flags[o >> 4]:") == 1
    assert "x11 = x11 + 4\n" in body and "if x11 > 4294967295" not in body
    assert "x15 = x14 + x10" in body and "if x15 > 4294967295:" in body
    assert "if not (x10 < x16):" in body and "^ 2147483648" not in body


def emitted_blocks(code: list[int | None], leaders: list[int]) -> str:
    """The source of the region of `code` (None: needs the interpreter) at the start of
    16 MiB of RAM, with blocks at the instruction indices `leaders`."""
    base = 0x8000_0000
    insns = tuple((base + 4 * i, None if w is None else Insn(base + 4 * i, w, 4))
                  for i, w in enumerate(code))
    return Emitter(Config(base, 16 << 20)).source(
        Discovery(base, tuple(base + 4 * i for i in leaders), (), insns))


def test_a_loop_through_a_short_latch_is_a_bare_while() -> None:
    """The loop's latch (two instructions) is on the branch's fall-through, the way
    back: the loop runs as a bare while of the branch's block and a copy of the latch,
    knowing what the branch's block knew, charged once a round; the latch itself,
    entered only that way, is left out, and so is the exit block, which its one way in
    runs a copy of."""
    source = emitted_blocks([
        d.enc_i(d.OP_LOAD, 10, 2, 11, 0),     # A: lw a0, 0(a1): a1 is now a RAM address
        d.enc_b(d.OP_BRANCH, 0, 10, 12, 12),  #    beq a0, a2, X
        d.enc_i(d.OP_IMM, 11, 0, 11, 4),      # C: addi a1, a1, 4 (no wrap test)
        d.enc_j(d.OP_JAL, 0, -12),            #    j A
        d.enc_i(d.OP_IMM, 13, 0, 13, 1),      # X: addi a3, a3, 1
        None,                                 #    (ecall)
    ], [0, 2, 4])
    body = source.split("while True:", 1)[1]
    loop = body.split("if b <= 0:\n            while True:\n", 1)[1]
    # One charge a round, for both blocks; leaving, the latch's share comes back.
    assert "r -= 4\n" in loop and "r -= 2" not in loop
    branch = loop.index("if x10 == x12:\n                    r += 2\n                    break\n")
    assert loop.count("x11 = x11 + 4\n") == 1 and branch < loop.index("x11 = x11 + 4\n")
    assert "if x11 > 4294967295" not in body and "b = " not in body.replace("b = -1", "")
    assert body.count("if b <= ") == 1  # A: C and X have no code of their own


def test_copied_blocks_match_the_interpreter(build_asm: Build) -> None:
    """A partition-style loop, whose shared latch is reached by a branch from the loop
    above it (copied there) and by falling through from the swap: budgets that end
    anywhere, the same state as the interpreter."""
    elf = build_asm(PROLOGUE + """
    mv a0, s3
    li t0, 0
    li t3, 64
    li t4, 73
fill:                       # 64 words of a pattern, so that both arms run
    mul t1, t0, t4
    andi t1, t1, 255
    sw t1, 0(a0)
    addi a0, a0, 4
    addi t0, t0, 1
    bne t0, t3, fill
    li s2, 200
again:
    mv a0, s3
    addi a1, s3, 252
scan:
    lw t1, 0(a0)
    blt t1, s2, latch
    lw t2, 0(a1)
    sw t2, 0(a0)
    sw t1, 0(a1)
    addi a1, a1, -4
latch:
    addi a0, a0, 4
    bltu a0, a1, scan
    add s4, s4, a0
    addi s2, s2, -1
    bnez s2, again
""" + END)
    snap, machine = both(elf, in_odd_slices(60_000))
    assert snap["exit"] == 0 and snap["x"][20] != 0


def test_loops_through_a_latch_match_the_interpreter(build_asm: Build) -> None:
    """Both scans of a Hoare partition: one branches forward to its latch (which loads,
    so the copy of it can leave), one branches back to a latch that falls into it; each
    runs as a bare while (_latch).  Budgets that end anywhere, the same state as the
    interpreter."""
    elf = build_asm(PROLOGUE + """
    mv a0, s3
    li t0, 0
    li t3, 64
    li t4, 37
fill:
    mul t1, t0, t4
    andi t1, t1, 127
    sw t1, 0(a0)
    addi a0, a0, 4
    addi t0, t0, 1
    bne t0, t3, fill
    li t1, 1000
    sw t1, 0(a0)            # a sentinel above the words (the word below them is 0)
    li s2, 100
again:
    addi s2, s2, -1
    mv a0, s3
    addi a1, s3, 256
    andi s6, s2, 127
up:                         # while a[i] < pivot: i++ (the latch loads the next word)
    lw t1, 0(a0)
    blt t1, s6, up_latch
    j down_entry
up_latch:
    addi a0, a0, 4
    lw t5, 0(a0)
    add s5, s5, t5
    j up
down:                       # do j-- while a[j] > pivot (the latch falls into it)
    addi a1, a1, -4
down_entry:
    lw t2, -4(a1)
    mv t6, a1
    bltu s6, t2, down
    add s4, s4, a0
    add s4, s4, t6
    bnez s2, again
""" + END)
    snap, machine = both(elf, in_odd_slices(200_000))
    assert snap["exit"] == 0 and snap["x"][20] != 0 and snap["x"][21] != 0
