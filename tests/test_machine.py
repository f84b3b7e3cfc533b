"""Board-level behaviour: CLINT/PLIC interrupts, WFI and the clock, HTIF, syscon, PL011 RX."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import emud
from conftest import PASS_OR_FAIL
from emud import migration
from emud.chardev import RingBackend
from emud.clock import VirtualClock
from emud.machine import CLINT_BASE, PLIC_BASE, Machine

Build = Callable[..., Path]

# Common prologue: trap handler address in mtvec, stack.
PROLOGUE = """
.globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li sp, 0x80010000
"""
PASS = "li t0, 0x100000\n li t1, 0x5555\n sw t1, 0(t0)\n1: j 1b\n"


def test_clint_timer_interrupt_wakes_wfi_at_the_deadline(build_asm: Build) -> None:
    image = build_asm(PROLOGUE + """
    li t0, 0x2004000        # mtimecmp = 1000 ticks = 100 us
    li t1, 1000
    sw t1, 0(t0)
    sw zero, 4(t0)
    li t0, 0x80             # mie.MTIE
    csrw mie, t0
    csrsi mstatus, 8        # mstatus.MIE
1:  wfi
    j 1b
.align 2
handler:
    csrr a0, mcause
    li t0, 0x80000007
    bne a0, t0, fail
""" + PASS_OR_FAIL)
    m = emud.Machine(image)
    assert m.run().exit_code == 0
    assert m.now_ns >= 100_000
    assert m.icount < 100  # the clock jumped: no spinning until the deadline


def test_plic_uart_rx_interrupt_echoes(build_asm: Build) -> None:
    image = build_asm(PROLOGUE + """
    li t0, 0x1000002c       # PL011 LCR_H = 8-bit words, character mode
    li t1, 0x60
    sw t1, 0(t0)
    li t0, 0x10000030       # CR = UARTEN|TXE|RXE: input is held until then
    li t1, 0x301
    sw t1, 0(t0)
    li t0, 0x10000038       # PL011 IMSC = RX
    li t1, 0x10
    sw t1, 0(t0)
    li t0, 0x0c000028       # PLIC priority[10] = 1
    li t1, 1
    sw t1, 0(t0)
    li t0, 0x0c002000       # PLIC enable bit 10
    li t1, 0x400
    sw t1, 0(t0)
    li t0, 0x800            # mie.MEIE
    csrw mie, t0
    csrsi mstatus, 8
1:  wfi
    j 1b
.align 2
handler:
    li t0, 0x0c200004       # claim
    lw t1, 0(t0)
    li t2, 0x10000000
    lw a0, 0(t2)            # pop the received byte
    addi a0, a0, 1          # echo it +1
    sw a0, 0(t2)
    sw t1, 0(t0)            # complete
    li t3, 'q' + 1
    bne a0, t3, 2f
""" + PASS + "2: mret\n")
    m = emud.Machine(image)
    assert m.run(max_instructions=100_000).reason == "idle"  # waits for input
    m.uart.write(b"HALq")
    assert m.run(max_instructions=100_000).exit_code == 0
    assert m.uart.read() == b"IBMr"


def test_htif_tohost_pass_and_fail(build_asm: Build) -> None:
    template = """
.globl _start, tohost
_start:
    li t0, {value}
    la t1, tohost
    sw t0, 0(t1)
1:  j 1b
.data
.align 3
tohost: .word 0, 0
"""
    assert emud.Machine(build_asm(template.format(value=1), "pass")).run().exit_code == 0
    m = emud.Machine(build_asm(template.format(value=(5 << 1) | 1), "fail"))
    assert m.run().exit_code == 5
    assert m.icount <= 4  # stops right at the store


def test_syscon_reset_restarts_from_the_entry(build_asm: Build) -> None:
    image = build_asm("""
.globl _start
_start:
    la t0, counter
    lw t1, 0(t0)
    addi t1, t1, 1
    sw t1, 0(t0)
    li t0, 0x100000
    li t2, 0x7777            # reset
    sw t2, 0(t0)
1:  j 1b
.data
.align 2
counter: .word 0
""")
    m = emud.Machine(image)
    assert m.run(instructions=40).reason == "limit"
    # RAM is reloaded from the image on reset, so the counter never passes 1.
    assert m.read_u32("counter") in (0, 1)
    assert m.pc >= m.symbols["_start"]
    assert m.exit_code is None


def test_wfi_without_timers_is_idle(build_asm: Build) -> None:
    m = emud.Machine(build_asm(".globl _start\n_start: wfi\n j _start\n"))
    assert m.run().reason == "idle"
    assert m.run().reason == "idle"
    assert m.icount == 1


def test_clock_timers_fire_in_deadline_order() -> None:
    clock = VirtualClock(shift=2)
    fired: list[str] = []
    a, b = clock.timer(lambda: fired.append("a")), clock.timer(lambda: fired.append("b"))
    a.modify(100)
    b.modify(40)
    assert clock.insns_until_deadline(1000) == 10
    clock.advance_insns(10)
    assert fired == ["b"] and clock.now_ns == 40
    a.cancel()
    assert clock.insns_until_deadline(1000) == 1000
    assert not clock.jump_to_next_deadline()
    a.modify(50)
    assert clock.jump_to_next_deadline() and fired == ["b", "a"] and clock.now_ns == 50


def test_wide_and_misaligned_clint_and_plic_writes_keep_their_registers_in_range() -> None:
    """Found by tests/test_fuzz_mmio.py: the monitor's 8-byte `write` at the high half
    of mtimecmp/mtime, or a misaligned PLIC enable store, left values wider than the
    registers, and every savevm then failed."""
    machine = Machine(RingBackend())
    bus = machine.bus
    bus.write(CLINT_BASE + 0x4004, (1 << 64) - 1, 8)  # mtimecmp high half, 8 bytes
    bus.write(CLINT_BASE + 0xBFFC, (1 << 64) - 1, 8)  # mtime high half: mtime wraps
    bus.write(PLIC_BASE + 0x2006, 0xFFFF_FFFF, 4)  # enable, misaligned
    assert machine.device("clint").mtimecmp == (1 << 64) - 1
    assert machine.device("clint").mtime == 0xFFFF_FFFF_0000_0000
    assert machine.device("plic").enable >> 64 == 0 and not machine.device("plic").enable & 1
    snap = migration.capture(machine)
    migration.restore(machine, snap)
    assert migration.capture(machine).sections == snap.sections
