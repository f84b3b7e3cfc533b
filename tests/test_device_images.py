"""Guests that use the HPET and the PL011 through the PLIC (images/hpet_timers.c,
images/uart_echo.c).  The guests check themselves; the expected lines follow from
the spec (period 10^7 fs, 3 timers, line n = PLIC source 32 + n,
legacy timers on lines 2 and 8: docs/architecture.md)."""

from __future__ import annotations

import pytest

import emud
from conftest import IMAGES

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
    m = emud.Machine(IMAGES / "hpet_timers.elf", icount=shift)
    stop = m.run(max_instructions=5_000_000)
    assert (stop.reason, stop.exit_code) == ("poweroff", 0), m.uart.tail()
    assert m.uart.read().decode().splitlines() == HPET_LINES


def test_hpet_timers_guest_sleeps_through_the_waits() -> None:
    m = emud.Machine(IMAGES / "hpet_timers.elf")
    assert m.run(max_instructions=5_000_000).exit_code == 0
    # The periodic case alone spans 10 x 100 us of virtual time; WFI skips it.
    assert m.now_ns >= 10 * 100_000
    assert m.icount < m.now_ns


def test_uart_echo_is_interrupt_driven() -> None:
    m = emud.Machine(IMAGES / "uart_echo.elf")
    assert m.run(max_instructions=200_000).reason == "idle"  # asleep in WFI, awaiting input
    assert m.uart.read() == b"echo: ready\n"
    idle_icount = m.icount

    first = b"hello, world\n"
    m.uart.write(first)
    assert m.run(max_instructions=200_000).reason == "idle"
    assert m.uart.read() == first
    assert m.icount > idle_icount  # the handler ran

    second = b"a line longer than the sixteen-byte FIFO\n"
    m.uart.write(second + b"q")
    assert m.run(max_instructions=1_000_000).exit_code == 0
    total = len(first) + len(second) + 1
    assert m.uart.read().decode() == f"{second.decode()}\necho: {total} bytes\n"
