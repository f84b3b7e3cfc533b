"""Code coherence at the granularity of the bytes written, and debugging at full speed.

A store invalidates exactly the decoded instructions (in every context) and the
translated regions whose bytes it overlaps; a store to data next to code, even
in the same 16-byte granule, invalidates nothing.  Breakpoints and watchpoints
keep translation: regions leave before a breakpoint pc, and only the watched
granules take the slow path.  Every test runs both accelerators and observes the
decoded op objects and the translator's regions, never timing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, boot
from emud.cpu.debug import RWATCH, WATCH, Watchpoint
from emud.cpu.translate import Translator
from emud.machine import Machine
from emud.memory import FLAG_CODE, FLAG_DEBUG, FLAG_LOAD, FLAG_SHIFT

Build = Callable[[str], Path]
ACCELS = ["interp", "translate"]
S1, T0 = 9, 5

# A function whose first granule G holds code and data: the offsets below are from G.
BODY = """
    .balign 16
body:
    .option push
    .option norvc
    addi a0, a0, 1      # G+0:  I0, 4 bytes
    .option pop
    c.addi a1, 1        # G+4:  C1, 2 bytes
    c.addi a2, 1        # G+6:  C2
    c.j 1f              # G+8:  J
d1: .half 0             # G+10: data just after J
d2: .word 0             # G+12: data just before I4
1:
    .option push
    .option norvc
    addi a3, a3, 1      # G+16: I4, 4 bytes, in the next granule
    .option pop
    c.jr ra             # G+20: R
"""
INSNS = {"I0": (0, 4), "C1": (4, 2), "C2": (6, 2), "J": (8, 2), "I4": (16, 4), "R": (20, 2)}
LOAD_STORE = {1: ("lbu", "sb"), 2: ("lhu", "sh"), 4: ("lw", "sw")}


def poke_program(size: int) -> str:
    """A hot loop calls body and stores to d1 (data in body's code granule); then the hart
    waits, and after it wakes stores the bytes already at s1 back there (size bytes)."""
    load, store = LOAD_STORE[size]
    return f"""
    .globl _start
_start:
    la s0, d1
    li s2, 40
loop:
    jal ra, body
    lhu t1, 0(s0)
    addi t1, t1, 1
    sh t1, 0(s0)
    addi s2, s2, -1
    bnez s2, loop
    wfi
    {load} t1, 0(s1)
    {store} t1, 0(s1)
    wfi
    j .
""" + BODY


def state(machine: Machine) -> dict[str, Any]:
    h = machine.hart
    return {"x": list(h.x), "pc": h.pc, "icount": machine.clock.icount,
            "ram": hashlib.sha256(machine.ram.data).hexdigest()}


def machine_for(elf: Path, accel: str) -> Machine:
    machine = boot(elf, accel=accel)
    if accel == "translate":  # translated early, and kept: these tests look at what is
        translator(machine).hot = 2
        translator(machine).review = 0
    return machine


def translator(machine: Machine) -> Translator:
    accel = machine.hart.accel
    assert isinstance(accel, Translator)
    return accel


def region_pcs(t: Translator, entry: int) -> set[int]:
    pcs, exits = t.members[entry]
    return set(pcs)


CASES = [  # (offset from G, size, instructions it overlaps)
    (0, 4, {"I0"}),  # exactly on a 4-byte instruction
    (12, 4, set()),  # data ending just before I4
    (10, 2, set()),  # data starting just after J
    (4, 1, {"C1"}),  # each half of a compressed instruction
    (5, 1, {"C1"}),
    (7, 1, {"C2"}),
    (16, 1, {"I4"}),  # each half of a 4-byte instruction
    (18, 1, {"I4"}),
    (18, 2, {"I4"}),  # a halfword on the second half: the instruction starts 2 before it
    (4, 4, {"C1", "C2"}),
]


@pytest.mark.parametrize(("offset", "size", "hit"), CASES)
def test_a_store_invalidates_exactly_the_instructions_it_overlaps(
        build_asm: Build, offset: int, size: int, hit: set[str]) -> None:
    elf = build_asm(poke_program(size))
    states = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        g = machine.image.symbols["body"]
        assert g % 16 == 0
        hart = machine.hart
        assert machine.run_until_poweroff(10_000) is None and hart.waiting
        pcs = {name: g + off for name, (off, _) in INSNS.items()}
        ops = {name: hart.cache[pc] for name, pc in pcs.items() if name != "J" or pc in hart.cache}
        assert set(ops) >= {"I0", "C1", "C2", "I4", "R"}
        regions, members = {}, {}
        if accel == "translate":
            t = translator(machine)
            regions = dict(t.regions)
            members = {e: region_pcs(t, e) for e in regions}
            assert any(pcs["I0"] in m for m in members.values()), "body is translated"

        hart.x[S1] = g + offset
        hart.waiting = False
        assert machine.run_until_poweroff(100) is None and hart.waiting
        for name, op in ops.items():
            if name in hit:
                assert not hart.decoded(pcs[name]), name
            else:
                assert hart.cache.get(pcs[name]) is op, name
        if accel == "translate":
            t = translator(machine)
            hit_pcs = {pcs[name] for name in hit}
            for entry, region in regions.items():
                assert (t.regions.get(entry) is region) == (not members[entry] & hit_pcs)
            assert not any(t.translated(pc, 1) for pc in hit_pcs)
            if not hit:
                assert t.regions == regions
        states.append(state(machine))
    assert states[0] == states[1]


def test_code_flags_follow_what_is_decoded_or_translated(build_asm: Build) -> None:
    elf = build_asm(poke_program(4))
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        g = machine.image.symbols["body"]
        machine.run_until_poweroff(10_000)
        flags, ram = machine.ram.flags, machine.ram
        granules = [(g - ram.base) >> FLAG_SHIFT, (g + 16 - ram.base) >> FLAG_SHIFT]
        assert all(flags[i] & FLAG_CODE for i in granules)
        data_granule = (machine.image.symbols["loop"] - ram.base) >> FLAG_SHIFT
        assert not flags[data_granule + 0x1000 // 16] & FLAG_CODE  # far from any code
        # A debugger write over the whole function: nothing decoded is left in its granules.
        machine.bus.write_bytes(g, machine.bus.read_bytes(g, 22))
        assert not any(flags[i] & FLAG_CODE for i in granules)
        assert not any(machine.hart.decoded(g + off) for off, _ in INSNS.values())
        assert flags[data_granule] & FLAG_CODE  # the loop's code is still decoded
        machine.hart.flush_code()  # fence.i: nothing is left anywhere
        assert not machine.ram.flagged(range(len(flags)), FLAG_CODE)


AHEAD = """
    .globl _start
_start:
    la s7, ahead
    lw s8, 0(s7)        # addi s5, s5, 1
    la s9, alt
    lw s9, 0(s9)        # addi s5, s5, 3
    li s2, 100
    .option norvc
loop:
    andi t0, s2, 1      # odd s2: the instruction ahead becomes alt, even: back again
    neg t0, t0
    xor t1, s8, s9
    and t1, t1, t0
    xor t3, s8, t1
    sw t3, 0(s7)        # into this block, two instructions ahead
    addi s6, s6, 1
ahead:
    addi s5, s5, 1
    addi s2, s2, -1
    bnez s2, loop
    wfi
    j .
    .data
alt:
    addi s5, s5, 3
"""


def record_translations(t: Translator) -> list[int]:
    """The entries of the regions t compiles from now on."""
    entries: list[int] = []
    translate = t.translate

    def counting(entry: int, *args: Any, **kwargs: Any) -> Any:
        region = translate(entry, *args, **kwargs)
        if region is not None:
            entries.append(entry)
        return region

    t.translate = counting  # type: ignore[method-assign]
    return entries


@pytest.mark.parametrize("before", ["", "lw t4, 0(s7)"])
def test_a_store_into_the_same_block_ahead_of_the_pc_takes_effect(build_asm: Build,
                                                                   before: str) -> None:
    """`before`: a load from the same address first, so that the store's address test is
    known to pass and only its flag test is left: that one must still send it out."""
    elf = build_asm(AHEAD.replace("    sw t3, 0(s7)", f"    {before}\n    sw t3, 0(s7)"))
    states = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        translated = record_translations(translator(machine)) if accel == "translate" else []
        machine.run_until_poweroff(10_000)
        assert machine.hart.x[21] == 50 * 3 + 50 * 1
        assert accel == "interp" or len(translated) > 10, "the loop ran translated, again"
        states.append(state(machine))
    assert states[0] == states[1]


TWO_LOOPS = """
    .globl _start
_start:
    li s2, 200
first:                  # hot, then never again
    addi s3, s3, 1
    addi s2, s2, -1
    bnez s2, first
    la t0, start_second
    jr t0               # an indirect jump: the first loop's region ends here
start_second:
    la s0, var
second:
    addi s4, s4, 1
    lw t1, 4(s0)        # not the watched word: another granule
target:
    addi s5, s5, 1
    andi t0, s4, 1023
    bnez t0, second
    lw t2, 0(s0)        # the watched word, every 1024 iterations
    j second
    .data
    .align 5
var: .word 7
     .space 28
other: .word 9
"""


def test_a_breakpoint_in_a_hot_loop_keeps_the_rest_translated(build_asm: Build) -> None:
    elf = build_asm(TWO_LOOPS)
    runs = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        symbols = machine.image.symbols
        machine.run_until_poweroff(5_000)
        before = dict(translator(machine).regions) if accel == "translate" else {}
        machine.hart.set_breakpoint(symbols["target"], True)
        stops = []
        for _ in range(5):
            machine.run_slice()
            stop = machine.hart.debug_stop
            assert stop is not None
            stops.append((stop.kind, stop.pc, machine.clock.icount))
        runs.append((stops, state(machine)))
        if accel == "translate":
            t = translator(machine)
            target = symbols["target"]
            first = [e for e, r in before.items() if t.regions.get(e) is r
                     and symbols["first"] in region_pcs(t, e)]
            assert first, "the first loop's region stays"
            assert target not in t.code and target in t.exits  # the second leaves before it
        # Cleared, the breakpoint is gone from translated code too: the loop runs through.
        machine.hart.set_breakpoint(symbols["target"], False)
        machine.run_slice(5_000)
        assert machine.hart.debug_stop is None
    assert runs[0] == runs[1]
    assert {pc for _, pc, _ in runs[0][0]} == {symbols["target"]}


def test_a_read_watchpoint_slows_only_its_granule(build_asm: Build) -> None:
    elf = build_asm(TWO_LOOPS)
    runs = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        symbols = machine.image.symbols
        machine.hart.add_watchpoint(Watchpoint(symbols["var"], 4, RWATCH))
        stops = []
        for _ in range(3):
            machine.run_slice(100_000)
            stop = machine.hart.debug_stop
            assert stop is not None
            stops.append((stop.kind, stop.addr, stop.pc, machine.clock.icount))
            if accel == "translate":  # the loop loading the unwatched word is translated
                t = translator(machine)
                assert any(symbols["target"] - 4 in region_pcs(t, e) for e in t.regions)
        runs.append((stops, state(machine)))
    assert runs[0] == runs[1]
    assert runs[0][0][0][:2] == (RWATCH, symbols["var"])


# The end of the trigger guests: sleep when done; the handler counts a trap in s5 and
# skips the (4-byte) instruction that trapped.
SKIP_AND_COUNT = """
    wfi
    j .
handler:
    addi s5, s5, 1
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret
"""
EXECUTE_TRIGGER = """
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    la t0, target
    csrw 0x7a0, zero    # tselect
    csrw 0x7a2, t0      # tdata2: the pc
    li t0, 0x20000044   # tdata1: mcontrol, m, execute
    csrw 0x7a1, t0
    csrsi mstatus, 8    # an M-mode trigger fires while MIE is set
    li s2, 300
    .option norvc
loop:
    addi s3, s3, 1
target:
    addi s4, s4, 1      # never runs: the trigger traps before it, the handler skips it
    addi s2, s2, -1
    bnez s2, loop
""" + SKIP_AND_COUNT


def test_an_execute_trigger_in_a_hot_loop_keeps_it_translated(build_asm: Build) -> None:
    elf = build_asm(EXECUTE_TRIGGER)
    states = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        machine.run_until_poweroff(20_000)
        assert machine.hart.x[19:22] == [300, 0, 300]  # s3, s4, s5
        if accel == "translate":
            t, target = translator(machine), machine.image.symbols["target"]
            assert t.regions and target not in t.code and target in t.exits
        states.append(state(machine))
    assert states[0] == states[1]


LOAD_TRIGGER = """
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    la s0, data
    addi t0, s0, 16     # the watched word, in the granule after data's
    csrw 0x7a0, zero    # tselect
    csrw 0x7a2, t0      # tdata2: the address
    li t0, 0x20000041   # tdata1: mcontrol, m, load
    csrw 0x7a1, t0
    csrsi mstatus, 8
    li s2, 300
    .option norvc
loop:
plain:
    lw t1, 0(s0)        # the same granule as nothing watched: stays translated
    add s3, s3, t1
    andi t0, s2, 15
    bnez t0, 1f
    lw t2, 16(s0)       # traps before loading; the handler skips it
    addi s4, s4, 1
1:  addi s2, s2, -1
    bnez s2, loop
""" + SKIP_AND_COUNT + """
    .data
    .align 4
data: .word 1, 0, 0, 0, 5
"""


def test_a_load_trigger_armed_by_the_guest_slows_only_its_granule(build_asm: Build) -> None:
    elf = build_asm(LOAD_TRIGGER)
    states = []
    for accel in ACCELS:
        machine = machine_for(elf, accel)
        assert machine.image is not None
        machine.run_until_poweroff(20_000)
        x = machine.hart.x
        assert (x[19], x[20], x[21], x[7]) == (300, 18, 18, 0)  # s3, s4, s5, t2
        if accel == "translate":
            assert machine.image.symbols["plain"] in translator(machine).code
        states.append(state(machine))
    assert states[0] == states[1]


def test_watchpoint_and_trigger_flags_follow_what_is_still_watched() -> None:
    machine = boot(IMAGES / "counter.elf")
    ram, hart = machine.ram, machine.hart
    base = ram.base + 0x10000

    def flags(addr: int) -> int:
        return ram.flags[(addr - ram.base) >> FLAG_SHIFT]

    wide, narrow = Watchpoint(base, 0x100, WATCH), Watchpoint(base + 0x40, 4, RWATCH)
    hart.add_watchpoint(wide)
    hart.add_watchpoint(narrow)
    hart.csr_write(0x7A2, base + 0x84, 0)  # tdata2, then tdata1: a store trigger (m)
    hart.csr_write(0x7A1, 0x20000042, 0)
    assert [flags(base + off) for off in (0, 0x40, 0x80, 0xF0, 0x100)] == [
        FLAG_DEBUG, FLAG_DEBUG | FLAG_LOAD, FLAG_DEBUG, FLAG_DEBUG, 0]
    hart.remove_watchpoint(wide)
    assert [flags(base + off) for off in (0, 0x40, 0x80, 0xF0)] == [0, FLAG_LOAD, FLAG_DEBUG, 0]
    assert hart.watch_loads
    hart.remove_watchpoint(narrow)
    hart.csr_write(0x7A1, 0x20000000, 0)  # disarmed
    assert not ram.flagged(range(len(ram.flags)), FLAG_DEBUG | FLAG_LOAD)
    assert not hart.watch_loads
