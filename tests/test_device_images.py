"""Guests that use the HPET and the PL011 through the PLIC (images/hpet_timers.c,
images/uart_echo.c).  The guests check themselves; the expected lines follow from
the spec (period 10^7 fs, 3 timers, line n = PLIC source 32 + n,
legacy timers on lines 2 and 8: docs/architecture.md)."""

from __future__ import annotations

import pytest

from conftest import IMAGES, boot, serial_text
from emud.machine import RunState

HPET_LINES = [
    "hpet: period 10000000 fs, 3 timers",
    "periodic: 10 periods of 10000 ticks on source 35",
    "oneshot: 1 interrupt on source 36, status 00000002",
    "wrap32: 2 interrupts, counter high word 1",
    "legacy: timer 0 -> source 34, timer 1 -> source 40",
    "fsb: c0ffee42 written to RAM, 0 line interrupts",
    "hpet: all ok",
]


@pytest.mark.parametrize("shift", [0, 4])
def test_hpet_timers_guest(shift: int) -> None:
    machine = boot(IMAGES / "hpet_timers.elf", icount_shift=shift)
    assert machine.run_until_poweroff(max_insns=5_000_000) == 0, serial_text(machine)
    assert serial_text(machine).splitlines() == HPET_LINES


def test_hpet_timers_guest_sleeps_through_the_waits() -> None:
    machine = boot(IMAGES / "hpet_timers.elf")
    assert machine.run_until_poweroff(max_insns=5_000_000) == 0
    # The periodic case alone spans 10 x 100 us of virtual time; WFI skips it.
    assert machine.clock.now_ns >= 10 * 100_000
    assert machine.clock.icount < machine.clock.now_ns


def test_uart_echo_is_interrupt_driven() -> None:
    machine = boot(IMAGES / "uart_echo.elf")
    assert machine.run_until_poweroff(max_insns=200_000) is None
    assert machine.run_slice() is RunState.IDLE  # asleep in WFI, waiting for input
    assert serial_text(machine) == "echo: ready\n"
    idle_icount = machine.clock.icount

    first = b"hello, world\n"
    machine.serial.feed(first)
    assert machine.run_until_poweroff(max_insns=200_000) is None
    assert serial_text(machine) == first.decode()
    assert machine.clock.icount > idle_icount  # the handler ran

    second = b"a line longer than the sixteen-byte FIFO\n"
    machine.serial.feed(second + b"q")
    assert machine.run_until_poweroff(max_insns=1_000_000) == 0
    total = len(first) + len(second) + 1
    assert serial_text(machine) == f"{second.decode()}\necho: {total} bytes\n"
