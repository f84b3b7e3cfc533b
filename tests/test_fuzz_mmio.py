"""Bounded, seeded MMIO fuzz of the device windows (issue 15).

Random loads and stores of random sizes, values and alignments to the HPET,
PL011, PLIC and CLINT, executed by the hart from a generated program and
driven straight through the bus.  Every round must finish within its
instruction budget without an exception, and the state it leaves must save
and load: vmstate save -> load -> save gives the same bytes, device by
device and for the whole machine.

Counts (README, "Devices"): 40 guest programs of 1,500 accesses plus bursts
(478K instructions in all, icount shift 0, 4 or 10 so timers fire) and 40
bus rounds of 3,000 accesses; about 9 s on the development machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from emud import migration
from emud.chardev import RingBackend
from emud.machine import (
    CLINT_BASE,
    HPET_BASE,
    PLIC_BASE,
    RAM_BASE,
    SYSCON_BASE,
    UART0_BASE,
    Machine,
)
from emud.memory import BusError

GUEST_ROUNDS, GUEST_ACCESSES = 40, 1_500
BUS_ROUNDS, BUS_ACCESSES = 40, 3_000

# Registers worth hitting often in each window (base, [(offset, span)]), plus anywhere.
WINDOWS = [
    (HPET_BASE, 0x400, [(0x000, 0x30), (0x0F0, 0x10), (0x100, 0x80)]),
    (UART0_BASE, 0x1000, [(0x000, 0x4), (0x02C, 0x8), (0x000, 0x50), (0xFE0, 0x20)]),
    (PLIC_BASE, 0x400000, [(0x000, 0x100), (0x1000, 0x10), (0x2000, 0x10),
                           (0x200000, 0x10)]),
    (CLINT_BASE, 0x10000, [(0x0000, 0x8), (0x4000, 0x8), (0xBFF8, 0x8)]),
]


def random_address(rng: random.Random) -> int:
    base, size, hot = rng.choice(WINDOWS)
    if rng.random() < 0.8:
        offset, span = rng.choice(hot)
        return base + offset + rng.randrange(span)
    return base + rng.randrange(size)


def random_value(rng: random.Random, bits: int = 32) -> int:
    return rng.choice([0, (1 << bits) - 1, 1 << rng.randrange(bits), rng.getrandbits(8),
                       rng.getrandbits(bits)])


# --- a tiny RV32I encoder (the instructions the generated programs use) ---------------

T0, T1, T2, T3 = 5, 6, 7, 28
MTVEC, MEPC = 0x305, 0x341


def lui(rd: int, imm: int) -> int:
    return (imm & 0xFFFFF) << 12 | rd << 7 | 0x37


def addi(rd: int, rs1: int, imm: int) -> int:
    return (imm & 0xFFF) << 20 | rs1 << 15 | rd << 7 | 0x13


def li(rd: int, value: int) -> list[int]:
    hi = (value + 0x800) >> 12
    lo = value - (hi << 12)
    return [lui(rd, hi), addi(rd, rd, lo)]


def load(funct3: int, rd: int, rs1: int) -> int:
    return rs1 << 15 | funct3 << 12 | rd << 7 | 0x03


def store(funct3: int, rs2: int, rs1: int) -> int:
    return rs2 << 20 | rs1 << 15 | funct3 << 12 | 0x23


def csrrw(rd: int, csr: int, rs1: int) -> int:
    return csr << 20 | rs1 << 15 | 1 << 12 | rd << 7 | 0x73


def csrrs(rd: int, csr: int, rs1: int) -> int:
    return csr << 20 | rs1 << 15 | 2 << 12 | rd << 7 | 0x73


MRET = 0x30200073
LOADS = [0, 1, 2, 4, 5]  # lb lh lw lbu lhu
STORES = [0, 1, 2]  # sb sh sw


def program(rng: random.Random, accesses: int) -> bytes:
    """Trap handler first (skips any faulting access), then the accesses, then power-off."""
    handler = [csrrs(T2, MEPC, 0), addi(T2, T2, 4), csrrw(0, MEPC, T2), MRET]
    entry: list[int] = []
    for _ in range(accesses):
        entry += li(T0, random_address(rng))
        if rng.random() < 0.03:  # a burst to one register (fills FIFOs, loopback included)
            entry += li(T1, random_value(rng))
            entry += [store(2, T1, T0)] * 20
        elif rng.random() < 0.5:
            entry += li(T1, random_value(rng))
            entry.append(store(rng.choice(STORES), T1, T0))
        else:
            entry.append(load(rng.choice(LOADS), T3, T0))
    entry += li(T0, SYSCON_BASE) + li(T1, 0x5555) + [store(2, T1, T0)]
    setup = li(T0, RAM_BASE + 4) + [csrrw(0, MTVEC, T0)]  # mtvec = the handler
    words = [jal_x0(4 * (1 + len(handler))), *handler, *setup, *entry]
    return b"".join(w.to_bytes(4, "little") for w in words)


def jal_x0(offset: int) -> int:
    imm = offset & 0x1FFFFF
    return ((imm >> 20 & 1) << 31 | (imm >> 1 & 0x3FF) << 21 | (imm >> 11 & 1) << 20
            | (imm >> 12 & 0xFF) << 12 | 0x6F)


# --- checks -----------------------------------------------------------------------------


def devices(machine: Machine) -> Iterator[tuple[str, object]]:
    yield from ((name, machine.device(ident)) for name, ident in
                (("hpet", "hpet"), ("pl011", "uart0"), ("plic", "plic"), ("clint", "clint")))


def assert_state_round_trips(machine: Machine) -> None:
    for name, device in devices(machine):
        vmsd = type(device).vmstate  # type: ignore[attr-defined]
        saved = vmsd.save(device)
        vmsd.load(device, saved, vmsd.version_id)
        assert vmsd.save(device) == saved, name
    snap = migration.capture(machine)
    fresh = Machine(RingBackend(), icount_shift=machine.clock.shift)
    migration.restore(fresh, snap, same_image=False)
    again = migration.capture(fresh)
    assert again.sections == snap.sections and again.ram == snap.ram
    assert (again.vm_clock_ns, again.icount) == (snap.vm_clock_ns, snap.icount)


@pytest.mark.parametrize("seed", range(GUEST_ROUNDS))
def test_guest_mmio_fuzz(seed: int) -> None:
    rng = random.Random(seed)
    code = program(rng, GUEST_ACCESSES)
    machine = Machine(RingBackend(), icount_shift=rng.choice([0, 4, 10]))  # timers fire too
    machine.bus.write_bytes(RAM_BASE, code)
    machine.hart.pc = RAM_BASE
    budget = len(code) // 4 * 2  # every instruction at most once, plus a handler per access
    assert machine.run_until_poweroff(max_insns=budget) == 0, "the program did not finish"
    assert machine.clock.icount <= budget
    assert_state_round_trips(machine)


@pytest.mark.parametrize("seed", range(BUS_ROUNDS))
def test_bus_mmio_fuzz(seed: int) -> None:
    rng = random.Random(1000 + seed)
    machine = Machine(RingBackend())
    for _ in range(BUS_ACCESSES):
        addr, size = random_address(rng), rng.choice([1, 2, 4, 4, 8])
        try:
            if rng.random() < 0.5:
                machine.bus.write(addr, random_value(rng, 8 * size), size)
            else:
                machine.bus.read(addr, size)
        except BusError:
            pass  # past the end of a window: the hart would take an access fault
        if rng.random() < 0.05:  # let time pass so timers fire between accesses
            machine.clock.advance_insns(rng.choice([1, 10, 1000, 100_000]))
    assert_state_round_trips(machine)
