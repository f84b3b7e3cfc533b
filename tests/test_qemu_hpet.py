"""HPET: our model against Debian's qemu-system-x86_64 7.2 (`-M q35`) under -qtest.

Debian's QEMU has no qtest accelerator, so there is no `clock_step` (see
docs/qtest.md §B5).  The scenarios are built so that no result depends
on when QEMU's wall-clock-driven virtual time happens to be read:

* Register scenarios run with the VM paused (`-S`): QEMU's virtual clock stays
  at 0, an enabled counter keeps the value it had at enable, and no timer ever
  fires.  Our model runs with its clock at 0 and never advanced.  This covers
  every read-back rule, masks, access sizes, the main counter while stopped or
  frozen, W1C with nothing pending, the legacy-input routing and the timer
  index == num_timers quirk (hpet.md §3-§9, §11, §12, §17).
* Expiry scenarios run QEMU (a halt-forever firmware, so nothing else touches
  the HPET) with the counter stopped while everything is set up, then enable it
  and wait until the counter has passed every deadline the scenario arms.  Only
  the end states are compared: one-shot timers fire exactly once whenever the
  callback runs, so the ISR, the line edges, a FSB write and the 32-bit wrap
  pop are the same for late (QEMU) and exact (model) callbacks.  The counter is
  never read while it runs.  Periodic timers, whose pulse counts depend on
  callback lateness (hpet.md §10.1 double pulse), are compared only through
  timing-independent facts: the comparator advanced by whole periods.

QEMU's HPET lines arrive at the IOAPIC, intercepted there: output n is reported
as n.  Ours is PLIC source 32 + n, except that ISA IRQ 0 (output 0: legacy timer 0
and the PIT input) is delivered on line 2, where the pc's IOAPIC puts it
(docs/architecture.md); so QEMU's 0 is compared with our 2, and no expiry scenario
routes an enabled timer to line 0 or 2 by its INT_ROUTE field (ambiguous).
Areas where 7.2 and newest QEMU differ are avoided (§17), or asserted as
`Difference`s.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from differential import Difference, Dump, Edge, R, Seen, W, assert_same, value_becomes
from qtest import QTest, device_sections

from emud.chardev import RingBackend
from emud.hw.hpet import VMSTATE_HPET
from emud.machine import HPET_BASE, HPET_IRQ_BASE, RAM_BASE, Machine

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
QEMU_HPET = 0xFED0_0000
QEMU_MACHINE = "q35,pit=off"  # q35's hpet-intcap is ours (0x00ff0104); no PIT on IRQ 0
FSB_QEMU, FSB_MODEL = 0x0001_0000, RAM_BASE + 0x0001_0000  # free RAM words on each side

# Register offsets and bits (hpet.md §3-§8)
GCAP, GCAP_HI, CONF, CONF_HI, ISR, ISR_HI, COUNT, COUNT_HI = (
    0x000, 0x004, 0x010, 0x014, 0x020, 0x024, 0x0F0, 0x0F4)
ENABLE, LEGACY = 1, 2
LEVEL, INT_ENB, PERIODIC, VAL_SET, MODE32, FSB_EN = 1 << 1, 1 << 2, 1 << 3, 1 << 6, 1 << 8, 1 << 14


def tconf(n: int) -> int:
    return 0x100 + 0x20 * n


def tcmp(n: int) -> int:
    return 0x108 + 0x20 * n


def tfsb(n: int) -> int:
    return 0x110 + 0x20 * n


def route(line: int) -> int:
    return line << 9


@dataclass(frozen=True)
class Input:
    """Drive a legacy input: pin 0 = PIT, pin 1 = RTC (hpet.md §11)."""

    pin: int
    level: int

    def __str__(self) -> str:
        return f"input {('pit', 'rtc')[self.pin]} = {self.level}"


@dataclass(frozen=True)
class Reset:
    """A system reset (QEMU: QMP system_reset, finished at its RESET event)."""

    def __str__(self) -> str:
        return "system reset"


@dataclass(frozen=True)
class RunUntil:
    """Let virtual time pass until the (enabled) main counter is at least `ticks`."""

    ticks: int

    def __str__(self) -> str:
        return f"run until counter >= {self.ticks:#x}"


@dataclass(frozen=True)
class RunThenStop:
    """RunUntil, then disable the HPET.  For periodic timers: how many pulses happen
    depends on callback lateness (hpet.md §10.1), so only which edges occurred counts."""

    ticks: int

    def __str__(self) -> str:
        return f"run until counter >= {self.ticks:#x}, then disable (edges as a set)"


@dataclass(frozen=True)
class FsbRoute:
    """Point timer n's FSB route at its scratch RAM word, with message `value`."""

    timer: int
    value: int

    def __str__(self) -> str:
        return f"fsb route of timer {self.timer} = {self.value:#x} -> scratch word"


@dataclass(frozen=True)
class Scratch:
    """Read timer n's scratch RAM word, where its FSB writes should land."""

    timer: int

    def __str__(self) -> str:
        return f"read scratch word {self.timer}"


@dataclass(frozen=True)
class Probe:
    """A timing-independent fact computed from register reads (read(offset) -> u32)."""

    name: str
    fact: Callable[[Callable[[int], int]], int]

    def __str__(self) -> str:
        return f"probe {self.name}"


Step = W | R | Input | Reset | RunUntil | RunThenStop | FsbRoute | Scratch | Probe | Dump


def read64(read: Callable[[int], int], offset: int) -> int:
    """A stable 64-bit value from two 32-bit reads (high, low, high again)."""
    while True:
        high = read(offset + 4)
        low = read(offset)
        if read(offset + 4) == high:
            return high << 32 | low


# --- QEMU side ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def halt_bios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 KiB firmware whose reset vector is `cli; hlt; jmp .-1` (qtest.md §B5, strategy 2)."""
    path = tmp_path_factory.mktemp("bios") / "halt.bin"
    path.write_bytes(bytes(0x10000 - 16) + bytes([0xFA, 0xF4, 0xEB, 0xFD]) + bytes(12))
    return path


ISA_IRQ0_LINE = 2  # our line for QEMU's HPET output 0 (module docstring)


def qemu_line(output: int) -> int:
    return ISA_IRQ0_LINE if output == 0 else output


def unambiguous(steps: Sequence[Step]) -> None:
    for step in steps:
        if isinstance(step, W) and step.offset >= 0x100 and step.offset % 0x20 == 0:
            assert not (step.value & INT_ENB and (step.value >> 9 & 0x1F) in (0, 2)), step


def run_qemu(steps: Sequence[Step], bios: Path | None = None, pit: bool = False) -> list[Seen]:
    """With `pit`, the edges are those of the HPET's `pit_enabled` output instead."""
    if bios is not None:  # only a running QEMU lets timers fire
        unambiguous(steps)
    extra = ["-bios", str(bios)] if bios else []
    with QTest(QEMU, QEMU_MACHINE, extra, paused=bios is None) as qemu:
        hpet = qemu.find_device("hpet")
        if pit:  # 7.2 intercepts only unnamed out-GPIOs: pit_enabled is the only one
            qemu.irq_intercept_out(hpet)
        else:
            qemu.irq_intercept_in("ioapic")

        def read(offset: int) -> int:
            return qemu.readl(QEMU_HPET + offset)

        trace = []
        for step in steps:
            value, dump = None, b""
            match step:
                case W(offset, data, size):
                    qemu.write_sized(QEMU_HPET + offset, data, size)
                case R(offset, size):
                    value = qemu.read_sized(QEMU_HPET + offset, size)
                case Input(pin, level):
                    qemu.set_irq_in(hpet, "unnamed-gpio-in", pin, level)
                case Reset():
                    qemu.system_reset()
                case RunUntil(ticks) | RunThenStop(ticks):
                    assert bios is not None, "time only passes in a running QEMU"
                    deadline = time.monotonic() + 10
                    while read64(read, COUNT) < ticks:
                        assert time.monotonic() < deadline, "QEMU's HPET counter is not running"
                    qemu.cmd("endianness")  # one more main-loop turn: due timers have run
                    if isinstance(step, RunThenStop):
                        qemu.writel(QEMU_HPET + CONF, 0)
                case FsbRoute(timer, message):
                    qemu.writel(QEMU_HPET + tfsb(timer), message)
                    qemu.writel(QEMU_HPET + tfsb(timer) + 4, FSB_QEMU + 4 * timer)
                case Scratch(timer):
                    value = qemu.readl(FSB_QEMU + 4 * timer)
                case Probe(_, fact):
                    value = fact(read)
                case Dump():
                    dump = device_sections(qemu.migrate_to_bytes())["hpet"]
            edges = [(kind, output if pit else qemu_line(output))
                     for kind, output in qemu.take_events()]
            if isinstance(step, RunThenStop):
                edges = sorted(set(edges))
            trace.append(Seen(str(step), value, tuple(edges), dump=dump))
        return trace


# --- model side -----------------------------------------------------------------------


def run_model(steps: Sequence[Step], pit: bool = False) -> list[Seen]:
    machine = Machine(RingBackend())
    bus, clock, hpet = machine.bus, machine.clock, machine.device("hpet")
    edges: list[Edge] = []
    if pit:
        spy_on_pit_enabled(machine, edges)
    else:
        for line in range(32):
            spy_on(machine, line, edges)

    def read(offset: int) -> int:
        return bus.read(HPET_BASE + offset, 4)

    trace = []
    for step in steps:
        value, dump = None, b""
        match step:
            case W(offset, data, size):
                bus.write(HPET_BASE + offset, data, size)
            case R(offset, size):
                value = bus.read(HPET_BASE + offset, size)
            case Input(pin, level):
                (hpet.pit_in, hpet.rtc_in)[pin].set(bool(level))
            case Reset():
                machine.reset()
            case RunUntil(ticks) | RunThenStop(ticks):
                # Exactly at each deadline, like icount time, until the counter is there.
                while (now := read64(read, COUNT)) < ticks:
                    end = clock.now_ns + (ticks - now) * 10
                    if clock.next_deadline() <= end:
                        clock.jump_to_next_deadline()
                    else:
                        clock.now_ns = end
                if isinstance(step, RunThenStop):
                    bus.write(HPET_BASE + CONF, 0, 4)
            case FsbRoute(timer, message):
                bus.write(HPET_BASE + tfsb(timer), message, 4)
                bus.write(HPET_BASE + tfsb(timer) + 4, FSB_MODEL + 4 * timer, 4)
            case Scratch(timer):
                value = bus.read(FSB_MODEL + 4 * timer, 4)
            case Probe(_, fact):
                value = fact(read)
            case Dump():
                dump = VMSTATE_HPET.save(hpet)
        if isinstance(step, RunThenStop):
            edges[:] = sorted(set(edges))
        trace.append(Seen(str(step), value, tuple(edges), dump=dump))
        edges.clear()
    return trace


def spy_on(machine: Machine, line: int, edges: list[Edge]) -> None:
    """Record HPET output `line` edges at its PLIC input, as qtest does at the IOAPIC."""
    irq = machine.device("plic").inputs[HPET_IRQ_BASE + line]
    sink = irq.sink

    def spy(level: bool) -> None:
        edges.append(("raise" if level else "lower", line))
        if sink is not None:
            sink(level)

    irq.sink = spy


def spy_on_pit_enabled(machine: Machine, edges: list[Edge]) -> None:
    """Record `pit_enabled` as qtest does: a line is printed when its level differs from
    the last one printed, and qtest assumes 0 before the first (docs/qtest.md §B4), although the
    output is high after reset."""
    irq = machine.device("hpet").pit_enabled
    sink = irq.sink
    printed = [False]

    def spy(level: bool) -> None:
        if level != printed[0]:
            edges.append(("raise" if level else "lower", 0))
            printed[0] = level
        if sink is not None:
            sink(level)

    irq.sink = spy


# --- register scenarios (VM paused, clock frozen) -------------------------------------

TIMER_REGS = [R(tconf(n) + k) for n in range(3) for k in range(0, 0x20, 4)]
GLOBAL_REGS = [R(offset) for offset in (GCAP, GCAP_HI, 0x008, 0x00C, CONF, CONF_HI, 0x018,
                                        ISR, ISR_HI, 0x028, 0x080, 0x0E0, 0x0EC,
                                        COUNT, COUNT_HI, 0x0F8, 0x0FC)]

PAUSED: dict[str, list[Step]] = {
    "reset values": [*GLOBAL_REGS, *TIMER_REGS, R(GCAP, 8), R(tconf(0), 8), R(tcmp(1), 8)],
    "general configuration keeps only ENABLE and LEGACY": [
        W(CONF, 0xFFFF_FFFF), R(CONF), R(CONF_HI), W(CONF_HI, 0xFFFF_FFFF), R(CONF_HI),
        W(CONF, 0xFFFF_FFFC), R(CONF), W(CONF, LEGACY), R(CONF), W(CONF, 0), R(CONF),
        W(GCAP, 0), W(GCAP_HI, 0), R(GCAP), R(GCAP_HI), W(0x008, 0x55), R(0x008),
    ],
    "timer configuration write mask and read-only capabilities": [
        *[step for n in range(3) for step in (W(tconf(n), 0xFFFF_FFFF), R(tconf(n)),
                                              W(tconf(n) + 4, 0), R(tconf(n) + 4),
                                              R(tcmp(n)), R(tcmp(n) + 4))],
        W(tconf(1), 0), R(tconf(1)), W(tconf(2), route(31) | FSB_EN), R(tconf(2)),
    ],
    "one-shot comparator halves": [
        W(tcmp(0), 0x1234), R(tcmp(0)), R(tcmp(0) + 4), W(tcmp(0) + 4, 0x5678),
        R(tcmp(0)), R(tcmp(0) + 4), W(tcmp(1) + 4, 0), W(tcmp(1), 0xFFFF_FFFF),
        R(tcmp(1)), R(tcmp(1) + 4), R(tconf(1)),
    ],
    "periodic comparator writes go to the period unless VAL_SET": [
        W(tconf(0), PERIODIC), W(tcmp(0), 0x1000), W(tcmp(0) + 4, 0), R(tcmp(0)),
        R(tcmp(0) + 4), W(tconf(0), PERIODIC | VAL_SET), R(tconf(0)), W(tcmp(0), 0x2000),
        R(tconf(0)), R(tcmp(0)), R(tcmp(0) + 4), W(tcmp(0), 0x3000), R(tcmp(0)),
        W(tconf(0), PERIODIC | VAL_SET), W(tcmp(0) + 4, 0x7), R(tcmp(0) + 4), R(tconf(0)),
        W(tconf(0), 0), W(tcmp(0), 0x4444), R(tcmp(0)), R(tcmp(0) + 4),
    ],
    "32-bit mode truncates the comparator": [
        W(tcmp(1), 0x1111_2222), W(tcmp(1) + 4, 0x3333_4444), W(tconf(1), MODE32),
        R(tcmp(1)), R(tcmp(1) + 4), W(tcmp(1), 0xCAFE_F00D), R(tcmp(1)), R(tcmp(1) + 4),
        W(tconf(1), MODE32 | PERIODIC | VAL_SET), W(tcmp(1), 0x100), R(tcmp(1)),
        R(tcmp(1) + 4), R(tconf(1)), W(tconf(1), 0), R(tcmp(1)), R(tcmp(1) + 4),
    ],
    "FSB route and reserved timer words": [
        W(tfsb(0), 0xDEAD_BEEF), W(tfsb(0) + 4, 0xFEE0_0000), W(tfsb(2) + 4, 0x1234_5678),
        W(tconf(0) + 0x18, 0x55), W(tconf(0) + 0x1C, 0x55),
        R(tfsb(0)), R(tfsb(0) + 4), R(tfsb(2)), R(tfsb(2) + 4), R(tconf(0) + 0x18),
        R(tconf(0) + 0x1C),
    ],
    "main counter: written while stopped, frozen clock while enabled, lost while running": [
        W(COUNT, 0x1234_5678), W(COUNT_HI, 0x9), R(COUNT), R(COUNT_HI), W(CONF, ENABLE),
        R(COUNT), R(COUNT_HI), W(COUNT, 0x1111), R(COUNT), W(CONF, 0), R(COUNT), R(COUNT_HI),
        W(COUNT, 0xFFFF_FFFF), W(CONF, ENABLE), R(COUNT), R(COUNT_HI), W(CONF, 0),
        W(COUNT_HI, 0xFFFF_FFFF), R(COUNT_HI), R(COUNT, 8),
    ],
    "interrupt status: write-1-to-clear with nothing pending": [
        W(ISR, 0xFFFF_FFFF), R(ISR), W(ISR_HI, 0xFFFF_FFFF), R(ISR_HI), W(ISR, 0), R(ISR),
    ],
    "timer index == num_timers is reachable but never reset; later ones are not": [
        *[R(tconf(3) + k) for k in range(0, 0x20, 4)],
        W(tconf(3), 0xFFFF_FFFF), W(tcmp(3), 0x77), W(tfsb(3), 0x99), R(tconf(3)),
        R(tcmp(3)), R(tfsb(3)), W(tconf(4), 0xFFFF_FFFF), W(tfsb(4), 0x99), R(tconf(4)),
        R(tfsb(4)), W(tfsb(23), 0x99), R(tfsb(23)),
    ],
    "only 4- and 8-byte accesses": [
        R(GCAP, 1), R(GCAP + 1, 1), R(GCAP, 2), R(GCAP_HI + 2, 2), W(CONF, LEGACY, 1),
        R(CONF), W(tfsb(0), 0xABCD, 2), R(tfsb(0)), W(tfsb(0), 0x12, 1), R(tfsb(0)),
        W(COUNT, 0x55, 1), R(COUNT),
    ],
    "8-byte accesses": [
        R(GCAP, 8), W(tfsb(1), 0x1122_3344_5566_7788, 8), R(tfsb(1)), R(tfsb(1) + 4),
        R(tfsb(1), 8), W(COUNT, 0xA_0000_0005, 8), R(COUNT, 8), R(COUNT_HI),
        W(tconf(0), 0xFFFF_FFFF_0000_0A04, 8), R(tconf(0), 8), W(tcmp(2), 0x1_0000_0002, 8),
        R(tcmp(2), 8), W(CONF, 0xFFFF_FFFF_FFFF_FFFF, 8), R(CONF, 8), R(ISR, 8),
    ],
    "reset: timers and counter, but not FSB routes or timer num_timers": [
        W(tfsb(0), 0xAB), W(tfsb(0) + 4, 0xCD), W(tconf(3), 0xFFFF_FFFF), W(tcmp(3), 0x77),
        W(tconf(0), 0xFFFF_FFFF), W(tcmp(1) + 4, 0), W(tcmp(1), 5), W(COUNT, 0x1234),
        W(tconf(2), PERIODIC | VAL_SET), W(tcmp(2), 0x99), W(tcmp(2), 0x88),
        W(CONF, ENABLE | LEGACY), Input(1, 1), Reset(), *GLOBAL_REGS, *TIMER_REGS,
        R(tconf(3)), R(tcmp(3)), Dump(),
    ],
    "legacy inputs pass through until legacy replacement takes the lines": [
        Input(0, 1), Input(0, 0), Input(1, 1), R(CONF), W(CONF, LEGACY), Input(0, 1),
        Input(1, 0), Input(1, 1), W(CONF, 0), Input(0, 0), Input(0, 1), W(CONF, LEGACY),
        Input(1, 0), W(CONF, 0), Input(0, 0),
    ],
}


@pytest.mark.parametrize("name", PAUSED)
def test_hpet_registers_match_qemu(name: str) -> None:
    steps = PAUSED[name]
    assert_same(run_qemu(steps), run_model(steps))


def random_register_steps(seed: int, count: int) -> list[Step]:
    """Random accesses with the clock frozen, steering clear of the 7.2 differences
    (hpet.md §17, §8, §9, §12): no comparator high-half writes in 32-bit mode, no 8-byte
    comparator writes in periodic or 32-bit mode (their results differ), no timer routed
    to the lines the legacy inputs drive (0 = our 2, and 8: 7.2 lowers a timer's line
    when FSB_EN is set, new does not; QEMU's output 0 also carries route 0), no dumps
    (7.2 does not arm timers with an all-ones comparator)."""
    rng = random.Random(seed)
    config = [route(31)] * 5  # writable config bits as last written (timers 3, 4 too)
    levels = [0, 0]  # the legacy inputs: a wire changes its level, it does not repeat it
    steps: list[Step] = [W(tconf(n), route(31)) for n in range(4)]
    offsets = [GCAP, GCAP_HI, 0x008, CONF, CONF_HI, ISR, ISR_HI, COUNT, COUNT_HI, 0x0F8,
               *[tconf(n) + k for n in range(5) for k in range(0, 0x20, 4)]]
    for _ in range(count):
        kind = rng.random()
        if kind < 0.05:
            pin = rng.randrange(2)
            levels[pin] ^= 1
            steps.append(Input(pin, levels[pin]))
            continue
        size = rng.choice([4, 4, 4, 4, 8, 2, 1])
        offset = rng.choice(offsets) & ~(size - 1)
        if kind < 0.45:
            steps.append(R(offset, size))
            continue
        value = rng.choice([rng.getrandbits(32), rng.getrandbits(64), rng.getrandbits(4),
                            1 << rng.randrange(64), 0, (1 << 64) - 1]) & ((1 << 8 * size) - 1)
        if offset >= 0x100 and size >= 4:
            n, reg = (offset - 0x100) // 0x20, offset % 0x20
            if reg == 0:
                if (value >> 9 & 0x1F) in (0, 2, 8):
                    value = value & ~(0x1F << 9) | route(rng.choice([1, 3, 5, 31]))
                config[n] = value & 0x7F4E
            risky = config[n] & (MODE32 | PERIODIC | VAL_SET)
            if (reg == 0xC and config[n] & MODE32) or (reg == 0x8 and size == 8 and risky):
                continue
            if reg == 0x8:
                config[n] &= ~VAL_SET
        if offset == CONF and size >= 4 and value & ENABLE and rng.random() < 0.7:
            value &= ~ENABLE  # mostly stopped, so comparator writes do not arm
        steps.append(W(offset, value, size))
    steps.extend(R(offset) for offset in offsets)
    return steps


@pytest.mark.parametrize("seed", range(4))
def test_hpet_random_register_sequences_match_qemu(seed: int) -> None:
    steps = random_register_steps(seed, 400)
    assert_same(run_qemu(steps), run_model(steps))


# Hidden state through the migration payload: timer deadlines (QEMU's clock is at 0,
# so a deadline is (comparator - counter) * 10 ns), periods, wrap flags, the offset.
DUMPS: dict[str, list[Step]] = {
    "armed periodic, 64-bit and 32-bit timers with the counter offset": [
        W(COUNT, 0x100),
        W(tconf(0), PERIODIC | VAL_SET | LEVEL | INT_ENB | route(5)), W(tcmp(0) + 4, 0),
        W(tconf(0), PERIODIC | VAL_SET | LEVEL | INT_ENB | route(5)), W(tcmp(0), 0x1000),
        W(tcmp(0), 0x800), W(tcmp(0) + 4, 0),
        W(tconf(1), INT_ENB | route(6)), W(tcmp(1) + 4, 0x2), W(tcmp(1), 0x10),
        W(tconf(2), MODE32 | INT_ENB | route(7)), W(tcmp(2), 0x5000),
        W(tfsb(2), 0x1234), W(tfsb(2) + 4, 0xFEE0_0000), W(CONF, ENABLE), Dump(),
    ],
    "stopped: counter frozen, timers cancelled, status kept": [
        W(COUNT, 0x500), W(tconf(0), LEVEL | INT_ENB | route(5)), W(tcmp(0) + 4, 0),
        W(tcmp(0), 0x600), W(tconf(1), PERIODIC | route(6)), W(tcmp(1), 0x40),
        W(CONF, ENABLE), W(CONF, 0), R(COUNT), Dump(),
    ],
    "8-byte comparator writes: period in periodic mode, comparator in one-shot": [
        W(tconf(0), PERIODIC), W(tcmp(0), 0x3_0000_4000, 8), W(tconf(1), 0),
        W(tcmp(1), 0x5_0000_6000, 8), W(tconf(2), MODE32 | PERIODIC | VAL_SET),
        W(tcmp(2), 0x1234, 8), R(tcmp(0), 8), R(tcmp(1), 8), R(tcmp(2), 8), R(tconf(2)),
        Dump(),
    ],
    "legacy mode with the RTC input high": [
        Input(1, 1), W(CONF, LEGACY), W(COUNT, 0x1234_5678), W(COUNT_HI, 0x9),
        W(tconf(1), MODE32 | PERIODIC | VAL_SET), W(tcmp(1), 0x7000_0000), Dump(),
    ],
}


@pytest.mark.parametrize("name", DUMPS)
def test_hpet_hidden_state_matches_qemu(name: str) -> None:
    steps = DUMPS[name]
    assert_same(run_qemu(steps), run_model(steps))


def test_32bit_wrap_pop_is_one_tick_later_than_7_2() -> None:
    steps: list[Step] = [
        W(COUNT, 0xFFFF_FF00), W(tconf(1), MODE32 | INT_ENB | route(6)), W(tcmp(1), 0x100),
        W(tcmp(0) + 4, 1), W(tcmp(0), 0x1000), W(tcmp(2) + 4, 1), W(tcmp(2), 0x2000),
        W(CONF, ENABLE), Dump()]
    # 7.2 arms the wrap pop when the low counter bits reach 0xffffffff (hpet.md §10.1);
    # new at the wrap itself (§10.2): timer 1's deadline is 10 ns later.
    deadline = 25 + 42 * 1 + 34  # payload offset of timer 1's qemu_timer field

    def one_tick_later(trace: Sequence[Seen]) -> Seen:
        seen = trace[-1]
        ns = int.from_bytes(seen.dump[deadline:deadline + 8], "big") + 10
        return replace(seen, dump=seen.dump[:deadline] + ns.to_bytes(8, "big")
                       + seen.dump[deadline + 8:])

    assert_same(run_qemu(steps), run_model(steps), [
        Difference(len(steps) - 1, "§10.1/§10.2: wrap pop at 0xffffffff vs at the wrap",
                   one_tick_later)])


def test_8_byte_comparator_write_with_val_set_is_one_access_unlike_7_2() -> None:
    steps: list[Step] = [W(tconf(1), PERIODIC | VAL_SET), W(tcmp(1), 0x7_0000_0100, 8),
                         R(tcmp(1)), R(tcmp(1) + 4)]
    # 7.2 splits it (§12): the low half sets comparator and period and clears VAL_SET,
    # so the high half only reaches the period.  New writes both halves of both.
    assert_same(run_qemu(steps), run_model(steps), [
        value_becomes(3, "§12: one 8-byte access in new", lambda v: 7)])


def test_pit_enabled_output_follows_legacy_replacement() -> None:
    steps: list[Step] = [
        W(CONF, LEGACY), R(CONF), W(CONF, 0), W(CONF, LEGACY | ENABLE), W(CONF, ENABLE),
        W(CONF, LEGACY), Reset(), W(CONF, LEGACY), W(CONF, LEGACY), W(CONF, 0)]
    assert_same(run_qemu(steps, pit=True), run_model(steps, pit=True))


def test_32bit_comparator_high_half_is_blocked_unlike_7_2() -> None:
    steps: list[Step] = [W(tconf(0), MODE32), W(tcmp(0) + 4, 0xABCD), R(tcmp(0) + 4),
                         W(tcmp(0), 0x10), R(tcmp(0) + 4)]
    # 7.2 stores the high half in 32-bit mode (§9.1); new ignores it, and a low write
    # replaces the whole field (§9.2), so the high half reads 0 both times.
    assert_same(run_qemu(steps), run_model(steps), [
        value_becomes(2, "§9.2: high comparator half ignored in 32-bit mode", lambda v: 0),
        value_becomes(4, "§9.2: 32-bit low write zero-extends", lambda v: 0)])


# --- expiry scenarios (QEMU running, counter stopped during set-up) --------------------

RUNNING: dict[str, list[Step]] = {
    "level one-shot raises the line and sets status until cleared": [
        W(tconf(0), LEVEL | INT_ENB | route(5)), W(tcmp(0), 0x3000), W(tcmp(0) + 4, 0),
        W(CONF, ENABLE), RunUntil(0x4000), R(ISR), W(ISR, 2), R(ISR), W(ISR, 1), R(ISR),
        W(ISR, 1), R(tconf(0)), R(tcmp(0)), R(tcmp(0) + 4),
    ],
    "edge one-shot pulses and leaves no status": [
        W(COUNT, 0x100), W(tconf(2), INT_ENB | route(6)), W(tcmp(2), 0x2100),
        W(tcmp(2) + 4, 0), W(CONF, ENABLE), RunUntil(0x3000), R(ISR), R(tcmp(2)),
        W(CONF, 0), R(ISR),
    ],
    "two timers on one line: the later expiry lowers the shared line": [
        W(tconf(0), LEVEL | INT_ENB | route(9)), W(tcmp(0), 0x1000), W(tcmp(0) + 4, 0),
        W(tconf(1), route(9)), W(tcmp(1), 0x3000), W(tcmp(1) + 4, 0), W(CONF, ENABLE),
        RunUntil(0x4000), R(ISR), W(ISR, 1), R(ISR),
    ],
    "FSB delivery writes the message to memory instead of a line": [
        W(tconf(1), INT_ENB | FSB_EN | route(4)), FsbRoute(1, 0x4321_ABCD), Scratch(1),
        W(tcmp(1), 0x2000), W(tcmp(1) + 4, 0), W(CONF, ENABLE), RunUntil(0x3000), Scratch(1),
        R(ISR),
    ],
    "32-bit one-shot pops at the wrap and at the match": [
        W(COUNT, 0xFFFF_FF00), W(tconf(2), MODE32 | INT_ENB | route(7)), W(tcmp(2), 0x100),
        W(CONF, ENABLE), RunUntil(0x1_0000_1000), R(ISR), R(tcmp(2)), R(tcmp(2) + 4),
    ],
    "32-bit level one-shot across the wrap": [
        W(COUNT, 0xFFFF_F000), W(tconf(0), MODE32 | LEVEL | INT_ENB | route(3)),
        W(tcmp(0), 0x800), W(CONF, ENABLE), RunUntil(0x1_0000_2000), R(ISR), W(ISR, 1),
    ],
    "legacy replacement routes timer 0 to line 0 and timer 1 to line 8": [
        W(tconf(0), INT_ENB | route(5)), W(tcmp(0), 0x1000), W(tcmp(0) + 4, 0),
        W(tconf(1), LEVEL | INT_ENB | route(6)), W(tcmp(1), 0x2000), W(tcmp(1) + 4, 0),
        W(tconf(2), LEVEL | INT_ENB | route(10)), W(tcmp(2), 0x3000), W(tcmp(2) + 4, 0),
        W(CONF, ENABLE | LEGACY), RunUntil(0x4000), R(ISR), W(ISR, 6), R(ISR),
        W(CONF, ENABLE), R(CONF),
    ],
    "32-bit periodic timer wraps its comparator modulo 2^32": [
        W(COUNT, 0xFFFF_0000), W(tconf(2), MODE32 | PERIODIC | VAL_SET | INT_ENB | route(12)),
        W(tcmp(2), 0xFFFF_8000), W(tcmp(2), 0x4000), W(CONF, ENABLE),
        RunThenStop(0x1_0002_0000),
        Probe("comparator - first deadline is a multiple of the period (mod 2^32)",
              lambda read: ((read(tcmp(2)) - 0xFFFF_8000) % (1 << 32)) % 0x4000),
        Probe("comparator passed the wrap", lambda read: read(tcmp(2)) < 0xFFFF_0000),
        R(tcmp(2) + 4), R(ISR),
    ],
    "periodic timer advances its comparator by whole periods": [
        W(tconf(1), PERIODIC | VAL_SET | INT_ENB | route(11)), W(tcmp(1) + 4, 0),
        W(tconf(1), PERIODIC | VAL_SET | INT_ENB | route(11)), W(tcmp(1), 0x10_0000),
        W(tcmp(1), 100_000), W(tcmp(1) + 4, 0), W(CONF, ENABLE),
        RunThenStop(0x10_0000 + 10 * 100_000),
        Probe("comparator - first deadline is a multiple of the period",
              lambda read: (read64(read, tcmp(1)) - 0x10_0000) % 100_000),
        Probe("at least 5 periods passed",
              lambda read: read64(read, tcmp(1)) >= 0x10_0000 + 5 * 100_000),
        R(ISR), R(tconf(1)),
    ],
}

@pytest.mark.parametrize("name", RUNNING)
def test_hpet_expiry_matches_qemu(name: str, halt_bios: Path) -> None:
    steps = RUNNING[name]
    assert_same(run_qemu(steps, halt_bios), run_model(steps))


def random_expiry_steps(seed: int) -> list[Step]:
    """Three one-shot timers with random trigger, size, delivery, route, legacy routing
    and distinct deadlines, armed by one enable and run past every deadline.  Out of
    the 7.2 differences (§6, §9, §10, §17): no level timer without INT_ENB or with FSB,
    no 32-bit comparator behind the counter, no deadline near a 32-bit wrap pop, and
    only one wrap pop (7.2 computes deadlines from the current time, truncated to a
    tick, so two timers due at the same tick may fire in either order)."""
    rng = random.Random(seed)
    start = rng.choice([0, 0x10_0000, 0xFFFF_E000, 0x1_2345_0000])
    wrap = (start | 0xFFFF_FFFF) + 1
    legacy = rng.random() < 0.3
    steps: list[Step] = [W(COUNT, start & 0xFFFF_FFFF), W(COUNT_HI, start >> 32)]
    deltas = rng.sample([d for d in range(-0x300, 0x6000, 0x100)
                         if abs(start + d - wrap) > 0x100 and d != 0], 3)
    wrap_pop = False  # two pops at the same wrap would race in 7.2 (relative deadlines)
    for n, delta in enumerate(deltas):
        mode32 = rng.random() < 0.4 and delta > 0 and not (wrap_pop and start + delta > wrap)
        wrap_pop |= mode32 and start + delta > wrap
        fsb = rng.random() < 0.25
        enabled = rng.random() < 0.8
        level = not fsb and enabled and rng.random() < 0.5
        config = (route(rng.choice([3, 4, 5, 6])) | (MODE32 if mode32 else 0)
                  | (FSB_EN if fsb else 0) | (INT_ENB if enabled else 0)
                  | (LEVEL if level else 0))
        cmp = (start + delta) & ((1 << 64) - 1)
        steps += [W(tconf(n), config), FsbRoute(n, 0xF5B0 + n)]
        if not mode32:
            steps.append(W(tcmp(n) + 4, cmp >> 32))
        steps.append(W(tcmp(n), cmp & 0xFFFF_FFFF))
    steps += [W(CONF, ENABLE | (LEGACY if legacy else 0)), RunUntil(start + 0x8000), R(ISR),
              *[Scratch(n) for n in range(3)], W(ISR, 7), R(ISR)]
    return steps


@pytest.mark.parametrize("seed", range(8))
def test_hpet_random_one_shots_match_qemu(seed: int, halt_bios: Path) -> None:
    steps = random_expiry_steps(seed)
    assert_same(run_qemu(steps, halt_bios), run_model(steps))


def test_disabling_keeps_level_status_unlike_7_2(halt_bios: Path) -> None:
    steps: list[Step] = [
        W(tconf(0), LEVEL | INT_ENB | route(5)), W(tcmp(0), 0x1000), W(tcmp(0) + 4, 0),
        W(CONF, ENABLE), RunUntil(0x2000), R(ISR), W(CONF, 0), R(ISR)]
    # 7.2 "deasserts" every timer when the HPET is disabled; new keeps the level
    # status bit and only lowers the line (hpet.md §5 ENABLE 1->0).
    assert_same(run_qemu(steps, halt_bios), run_model(steps), [
        value_becomes(7, "§5: disable keeps ISR in new", lambda isr: isr | 1)])


def test_level_fsb_delivery_sets_status_unlike_7_2(halt_bios: Path) -> None:
    steps: list[Step] = [
        W(tconf(1), LEVEL | INT_ENB | FSB_EN | route(4)), FsbRoute(1, 0x55AA), Scratch(1),
        W(tcmp(1), 0x1000), W(tcmp(1) + 4, 0), W(CONF, ENABLE), RunUntil(0x2000),
        Scratch(1), R(ISR)]
    # 7.2 leaves the status bit alone on an FSB delivery; new sets it for a level timer
    # (hpet.md §6).  The message reaches memory in both and no line moves.
    assert_same(run_qemu(steps, halt_bios), run_model(steps), [
        value_becomes(8, "§6: FSB expiry applies set-iff-level to ISR in new",
                      lambda isr: isr | 2)])


def test_level_to_edge_switch_clears_status_unlike_7_2(halt_bios: Path) -> None:
    steps: list[Step] = [
        W(tconf(0), LEVEL | INT_ENB | route(5)), W(tcmp(0), 0x1000), W(tcmp(0) + 4, 0),
        W(CONF, ENABLE), RunUntil(0x2000), R(ISR), W(tconf(0), INT_ENB | route(5)), R(ISR)]

    def lowers_the_line(trace: Sequence[Seen]) -> Seen:
        return replace(trace[6], irqs=(*trace[6].irqs, ("lower", 5)))

    # New deasserts a level timer switched to edge (hpet.md §8.2 step 1); 7.2 leaves the
    # status bit and the line as they were (§8.1).
    assert_same(run_qemu(steps, halt_bios), run_model(steps), [
        Difference(6, "§8.2: level -> edge lowers the line", lowers_the_line),
        value_becomes(7, "§8.2: level -> edge clears the status bit", lambda isr: isr & ~1)])


def test_level_expiry_with_interrupts_disabled_sets_status_unlike_7_2(
        halt_bios: Path) -> None:
    steps: list[Step] = [
        W(tconf(2), LEVEL | route(5)), W(tcmp(2), 0x1000), W(tcmp(2) + 4, 0),
        W(CONF, ENABLE), RunUntil(0x2000), R(ISR), W(ISR, 4), R(ISR)]
    # New sets the status bit of any level expiry; 7.2 only with INT_ENB (§6).  No line
    # moves in either.
    assert_same(run_qemu(steps, halt_bios), run_model(steps), [
        value_becomes(5, "§6: level expiry sets ISR even with INT_ENB=0 in new",
                      lambda isr: isr | 4)])
