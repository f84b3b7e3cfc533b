"""Trace events: QEMU's names and messages, enabled by glob, from the API and the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from conftest import IMAGES, ROOT
from emud import trace
from emud.clock import VirtualClock
from emud.device import DeviceContext
from emud.hw.hpet import HPET
from emud.hw.pl011 import PL011, Reg


@pytest.fixture
def lines() -> Iterator[list[str]]:
    captured: list[str] = []
    previous = trace.set_sink(captured.append)
    try:
        yield captured
    finally:
        trace.set_sink(previous)
        trace.disable_all()


def test_events_are_off_until_a_glob_enables_them(lines: list[str]) -> None:
    hpet = HPET()
    hpet.realize(DeviceContext(VirtualClock()))
    hpet.read(0x10, 4)
    assert lines == []
    assert trace.enable("hpet_ram_read*") == ["hpet_ram_read", "hpet_ram_read_invalid",
                                             "hpet_ram_read_reading_counter"]
    hpet.read(0x10, 4)
    assert lines == ["hpet_ram_read enter hpet_ram_readl at 0x10"]


def test_enable_syntax_and_unknown_patterns(lines: list[str]) -> None:
    assert trace.enable("enable=pl011_read") == ["pl011_read"]
    assert trace.events("pl011_read")[0].enabled
    trace.enable("-pl011_*")
    assert not any(ev.enabled for ev in trace.events("pl011_*"))
    with pytest.raises(ValueError, match="no trace event matches 'hpet_nothing'"):
        trace.enable("hpet_nothing")


def test_hpet_messages_are_qemus(lines: list[str]) -> None:
    trace.enable("hpet_*")
    hpet = HPET()
    hpet.realize(DeviceContext(VirtualClock()))
    hpet.write(0x0F0, 0x99, 4)
    hpet.read(0x0F4, 4)
    hpet.read(0x008, 4)
    hpet.write(0x010, 1, 4)
    hpet.write(0x0F0, 1, 4)
    hpet.write(0x124, 5, 4)
    hpet.write(0x100, 0x100, 4)
    hpet.write(0x10C, 1, 4)  # 32-bit mode: the high half is invalid, and only that is traced
    hpet.write(0x108, 2, 4)
    hpet.write(0x12C, 0, 4)  # timer 1 is 64-bit: its high half is a comparator write
    hpet.write(0x198, 0, 4)
    hpet.read(0x190, 4)
    hpet.write(0x118, 0, 4)
    assert lines == [
        "hpet_ram_write enter hpet_ram_writel at 0xf0 = 0x99",
        "hpet_ram_read enter hpet_ram_readl at 0xf4",
        "hpet_ram_read_reading_counter reading counter + 4 = 0x99",
        "hpet_ram_read enter hpet_ram_readl at 0x8",
        "hpet_ram_read_invalid invalid hpet_ram_readl",
        "hpet_ram_write enter hpet_ram_writel at 0x10 = 0x1",
        "hpet_ram_write enter hpet_ram_writel at 0xf0 = 0x1",
        "hpet_ram_write_counter_write_while_enabled Writing counter while HPET enabled!",
        "hpet_ram_write enter hpet_ram_writel at 0x124 = 0x5",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 1",
        "hpet_ram_write_tn_cfg hpet_ram_writel HPET_TN_CFG + 4",
        "hpet_ram_write enter hpet_ram_writel at 0x100 = 0x100",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 0",
        "hpet_ram_write_tn_cfg hpet_ram_writel HPET_TN_CFG + 0",
        "hpet_ram_write enter hpet_ram_writel at 0x10c = 0x1",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 0",
        "hpet_ram_write_invalid_tn_cmp invalid HPET_TN_CMP + 4 write",
        "hpet_ram_write enter hpet_ram_writel at 0x108 = 0x2",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 0",
        "hpet_ram_write_tn_cmp hpet_ram_writel HPET_TN_CMP + 0",
        "hpet_ram_write enter hpet_ram_writel at 0x12c = 0x0",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 1",
        "hpet_ram_write_tn_cmp hpet_ram_writel HPET_TN_CMP + 4",
        "hpet_ram_write enter hpet_ram_writel at 0x198 = 0x0",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 4",
        "hpet_timer_id_out_of_range timer id out of range: 0x4",
        "hpet_ram_read enter hpet_ram_readl at 0x190",
        "hpet_timer_id_out_of_range timer id out of range: 0x4",
        "hpet_ram_write enter hpet_ram_writel at 0x118 = 0x0",
        "hpet_ram_write_timer_id hpet_ram_writel timer_id = 0",
        "hpet_ram_write_invalid invalid hpet_ram_writel",
    ]


def test_pl011_messages_are_qemus(lines: list[str]) -> None:
    uart = PL011()
    uart.realize()
    uart.clk.period = (10**9 << 32) // 24_000_000  # a 24 MHz clock, for the baud trace
    trace.enable("pl011_*")
    uart.write(Reg.LCR_H, 0x70, 4)
    uart.write(Reg.CR, 0x301, 4)  # UARTEN|TXE|RXE: the receiver is ready
    uart.write(Reg.IBRD, 13, 4)
    uart.write(Reg.IMSC, 0x10, 4)
    uart.can_receive()
    uart.receive(b"A")
    uart.read(Reg.DR, 4)
    uart.read(0xFE0, 4)
    uart.read(0x050, 4)
    assert lines == [
        "pl011_write addr 0x02c value 0x00000070 reg LCRH",
        "pl011_write addr 0x030 value 0x00000301 reg CR",
        "pl011_write addr 0x024 value 0x0000000d reg IBRD",
        "pl011_baudrate_change new baudrate 115384 (clk: 24000000hz, ibrd: 13, fbrd: 0)",
        "pl011_write addr 0x038 value 0x00000010 reg IMSC",
        "pl011_irq_state irq state 0",
        "pl011_can_receive LCR 0x70, RX FIFO used 0/16, can_receive 16 chars",
        "pl011_receive recv 1 chars",
        "pl011_fifo_rx_put RX FIFO push char [0x41] 1/16 depth used",
        "pl011_irq_state irq state 1",
        "pl011_read_fifo RX FIFO read, used 0/16",
        "pl011_irq_state irq state 0",
        "pl011_read addr 0x000 value 0x00000041 reg DR",
        "pl011_read addr 0xfe0 value 0x00000011 reg ID",
        "pl011_read addr 0x050 value 0x00000000 reg UNKN",
    ]


def test_pl011_loopback_cr_writes_update_the_interrupt_state_each_time(
        lines: list[str]) -> None:
    """Newest QEMU re-evaluates the interrupt on every CR write in loopback, even one
    that changes no modem line; outside loopback a CR write does not."""
    uart = PL011()
    uart.realize()
    trace.enable("pl011_irq_state")
    uart.write(Reg.CR, 0x301, 4)  # not in loopback: no update
    uart.write(Reg.CR, 0x381, 4)  # loopback, no modem outputs: nothing changes
    uart.write(Reg.CR, 0x381, 4)
    uart.write(Reg.IMSC, 0x8, 4)  # DSR
    uart.write(Reg.CR, 0x781, 4)  # DTR -> DSR: raised
    uart.write(Reg.CR, 0x781, 4)  # again: still raised
    assert lines == ["pl011_irq_state irq state 0"] * 3 + ["pl011_irq_state irq state 1"] * 2


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emud", "run", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)


def test_cli_trace_goes_to_stderr_in_qemus_format() -> None:
    result = run(str(IMAGES / "hello.elf"), "-serial", "null", "--trace", "pl011_write",
                 "-trace", "enable=pl011_irq_*")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "pl011_write addr 0x000 value 0x00000048 reg DR" in lines  # 'H'
    assert "pl011_irq_state irq state 0" in lines
    assert all(line.startswith(("pl011_write ", "pl011_irq_state ")) for line in lines)


def test_cli_trace_help_lists_events_and_bad_patterns_fail() -> None:
    listed = run("--trace", "help")
    assert listed.returncode == 0 and "hpet_ram_read\n" in listed.stdout
    assert "pl011_fifo_rx_put" in listed.stdout.split()
    bad = run(str(IMAGES / "hello.elf"), "--trace", "hpet_nope*")
    assert bad.returncode == 1
    assert bad.stderr == "emud: no trace event matches 'hpet_nope*' (see --trace help)\n"


def test_cli_global_sets_device_properties() -> None:
    bad = run(str(IMAGES / "hello.elf"), "-serial", "null", "-global", "hpet.timers=40")
    assert bad.returncode == 1
    assert bad.stderr == "emud: hpet: property 'timers' must be in 3..32, got 40\n"
    good = run(str(IMAGES / "hello.elf"), "-serial", "null", "-global", "hpet.timers=8",
               "-global", "pl011.migrate-clk=off")
    assert good.returncode == 0, good.stderr
