"""HPET model: registers, timers, interrupts, properties and migration (docs/hpet.md, "new")."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemu.qmp import QMPClient

from conftest import IMAGES, PASS_OR_FAIL, ROOT, boot
from emud.chardev import RingBackend
from emud.clock import VirtualClock
from emud.device import DeviceContext, DeviceError
from emud.hw.hpet import HPET, ISA_IRQ0_LINE, RTC_ISA_IRQ, VMSTATE_HPET, catch_up
from emud.machine import HPET_BASE, HPET_IRQ_BASE, RAM_BASE, Machine
from emud.vmstate import VMStateError

M32, M64 = (1 << 32) - 1, (1 << 64) - 1

# Offsets and bits (hpet.md §3-§8)
GCAP, CONF, ISR, COUNT = 0x000, 0x010, 0x020, 0x0F0
ENABLE, LEGACY = 1, 2
LEVEL, INT_ENB, PERIODIC, VAL_SET, MODE32, FSB_EN = 2, 4, 8, 0x40, 0x100, 0x4000


def tconf(n: int) -> int:
    return 0x100 + 0x20 * n


def tcmp(n: int) -> int:
    return tconf(n) + 8


def tfsb(n: int) -> int:
    return tconf(n) + 0x10


def route(line: int) -> int:
    return line << 9


class Rig:
    """A stand-alone HPET whose output edges and FSB stores are recorded."""

    def __init__(self, **props: Any) -> None:
        self.clock = VirtualClock()
        self.stores: list[tuple[int, int, int]] = []  # (ns, address, value)
        self.hpet = HPET(**props)
        self.hpet.realize(DeviceContext(self.clock, dma_write=lambda a, v, size: self.stores
                                        .append((self.clock.now_ns, a, v))))
        self.edges: list[tuple[int, str, int]] = []  # (ns, raise|lower, line)
        for n, irq in enumerate(self.hpet.irqs):
            irq.sink = self._recorder(n)

    def _recorder(self, line: int) -> Callable[[bool], None]:
        def sink(level: bool) -> None:
            self.edges.append((self.clock.now_ns, "raise" if level else "lower", line))
        return sink

    def w(self, offset: int, value: int, size: int = 4) -> None:
        self.hpet.write(offset, value, size)

    def r(self, offset: int, size: int = 4) -> int:
        return self.hpet.read(offset, size)

    def w64(self, offset: int, value: int) -> None:
        self.w(offset, value & M32)
        self.w(offset + 4, value >> 32)

    def r64(self, offset: int) -> int:
        return self.r(offset) | self.r(offset + 4) << 32

    def run_to(self, ns: int) -> None:
        """Advance virtual time, running each timer exactly at its deadline."""
        clock = self.clock
        while clock.next_deadline() <= ns:
            clock.now_ns = max(clock.now_ns, clock.next_deadline())
            clock.run_timers()
        clock.now_ns = ns

    def take(self) -> list[tuple[int, str, int]]:
        edges, self.edges = self.edges, []
        return edges


# --- properties -----------------------------------------------------------------------


def test_default_capability_and_reset_values() -> None:
    rig = Rig()
    assert rig.r64(GCAP) == 0x009896808086A201  # 3 timers, 10 ns period
    assert rig.r(tconf(0) + 4) == 0x00FF0104  # hpet-intcap: lines 2, 8, 16-23
    assert rig.r64(tconf(0)) == 0x00FF0104_00000030
    assert rig.r64(tcmp(2)) == M64
    assert rig.r64(COUNT) == rig.r64(CONF) == rig.r64(ISR) == 0
    assert rig.hpet.pit_enabled.level


def test_timers_property_sets_num_tim_cap() -> None:
    assert Rig(timers=32).r(GCAP) == 0x8086BF01
    assert Rig(timers="8").hpet.num_timers == 8


def test_msi_property_advertises_fsb_delivery() -> None:
    assert Rig(msi=True).r(tconf(1)) == 0x8030
    assert Rig(msi="on").hpet.msi is True


@pytest.mark.parametrize("props, message", [
    ({"timers": 40}, "hpet: property 'timers' must be in 3..32, got 40"),
    ({"timers": 2}, "hpet: property 'timers' must be in 3..32, got 2"),
    ({"hpet-intcap": 0}, "hpet: property 'hpet-intcap' must be non-zero"),
    ({"hpet-intcap": 1 << 32}, "hpet: property 'hpet-intcap' must be a uint32"),
    ({"msi": 3}, "hpet: property 'msi' must be on or off"),
    ({"msi": "maybe"}, "hpet: property 'msi' takes on/off, not 'maybe'"),
    ({"timers": "many"}, "hpet: property 'timers' takes an integer"),
    ({"colour": 1}, "hpet: no property 'colour' \\(properties: timers, msi, hpet-intcap"),
])
def test_bad_properties_are_refused_at_realize(props: dict[str, Any], message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        HPET(**props).realize(DeviceContext(VirtualClock()))


def test_properties_are_fixed_after_realize() -> None:
    hpet = Rig().hpet
    with pytest.raises(DeviceError, match="cannot be changed after realize"):
        hpet.set_property("timers", 5)
    assert hpet.property_values() == {"timers": 3, "msi": False, "hpet-intcap": 0x00FF0104,
                                      "hpet-offset-saved": True}


def test_machine_takes_device_properties() -> None:
    machine = Machine(RingBackend(), device_props={"hpet": {"timers": 5, "hpet-intcap": 4}})
    assert machine.bus.read(HPET_BASE, 4) == 0x8086A401
    with pytest.raises(DeviceError, match="must be in 3..32, got 1"):
        Machine(RingBackend(), device_props={"hpet": {"timers": 1}})


# --- register decoding ----------------------------------------------------------------


def test_reserved_and_high_halves_read_zero_and_ignore_writes() -> None:
    rig = Rig()
    for offset in (0x008, 0x00C, 0x014, 0x018, 0x024, 0x080, 0x0F8, tconf(0) + 0x18,
                   tconf(0) + 0x1C):
        rig.w(offset, 0xFFFFFFFF)
        assert rig.r(offset) == 0, hex(offset)
    rig.w(GCAP, 0)
    assert rig.r(GCAP) == 0x8086A201
    rig.w(CONF, 0xFFFFFFFC)
    assert rig.r(CONF) == 0


def test_fsb_route_halves_are_stored_verbatim() -> None:
    rig = Rig()
    rig.w(tfsb(1), 0x1234)
    rig.w(tfsb(1) + 4, 0xFEE00000)
    assert rig.r64(tfsb(1)) == 0xFEE00000_00001234


def test_eight_byte_accesses_are_one_access_and_small_ones_are_dropped() -> None:
    rig = Rig()
    assert rig.r(GCAP, 8) == 0x009896808086A201
    rig.w(tfsb(0), 0x11223344_55667788, 8)
    assert rig.r(tfsb(0), 8) == 0x11223344_55667788
    assert rig.r(GCAP, 1) == rig.r(GCAP, 2) == 0  # below the minimum size
    assert rig.r(GCAP + 2, 4) == 0 and rig.r(GCAP + 4, 8) == 0  # misaligned
    rig.w(tfsb(0), 0, 2)
    rig.w(tfsb(0) + 4, 0, 8)
    assert rig.r(tfsb(0), 8) == 0x11223344_55667788
    assert rig.hpet.peek(GCAP + 1, 1) == 0xA2  # the debugger's view takes any size


def test_timer_index_equal_to_num_timers_is_reachable_but_never_reset() -> None:
    rig = Rig()
    assert rig.r(tconf(3)) == 0 and rig.r(tcmp(3)) == 0
    rig.w(tcmp(3), 0x55)
    assert rig.r(tcmp(3)) == 0x55  # QEMU's off-by-one range check
    rig.w(tcmp(4), 0x55)
    assert rig.r(tcmp(4)) == 0
    rig.hpet.reset()
    assert rig.r(tcmp(3)) == 0x55


def test_timer_config_write_mask_and_read_only_capabilities() -> None:
    rig = Rig()
    rig.w(tconf(0), 0xFFFFFFFF)
    assert rig.r(tconf(0)) == 0x7F7E  # FSB_EN and INT_ROUTE are not checked
    rig.w(tconf(0) + 4, 0)
    assert rig.r(tconf(0) + 4) == 0x00FF0104


def test_32bit_mode_truncates_and_ignores_the_comparator_high_half() -> None:
    rig = Rig()
    rig.w64(tcmp(0), 0x12345678_9ABCDEF0)
    rig.w(tconf(0), MODE32)
    assert rig.r64(tcmp(0)) == 0x9ABCDEF0
    rig.w(tcmp(0) + 4, 0xFFFF)  # newest QEMU drops it (7.2 stores it)
    assert rig.r64(tcmp(0)) == 0x9ABCDEF0
    rig.w(tcmp(0), 0x11111111_22222222, 8)
    assert rig.r64(tcmp(0)) == 0x22222222


def test_val_set_writes_comparator_and_period_then_clears_itself() -> None:
    rig = Rig()
    rig.w(tconf(0), PERIODIC | VAL_SET)
    assert rig.r(tconf(0)) & VAL_SET
    rig.w(tcmp(0), 0x1000)
    assert not rig.r(tconf(0)) & VAL_SET
    assert rig.r64(tcmp(0)) == 0xFFFFFFFF_00001000
    rig.w(tcmp(0), 0x2000)  # periodic without VAL_SET: only the period
    assert rig.r64(tcmp(0)) == 0xFFFFFFFF_00001000
    assert rig.hpet.timers[0].period == 0x2000
    rig.w(tconf(0), PERIODIC | VAL_SET)
    rig.w(tcmp(0), 0x5_00000007, 8)  # one 8-byte write sets both halves of both
    assert rig.r64(tcmp(0)) == 0x5_00000007 and rig.hpet.timers[0].period == 0x5_00000007


# --- main counter ---------------------------------------------------------------------


def test_counter_runs_at_100_mhz_only_while_enabled() -> None:
    rig = Rig()
    rig.w64(COUNT, 0xFFFF_FFF0)
    rig.run_to(5000)
    assert rig.r64(COUNT) == 0xFFFF_FFF0  # stopped
    rig.w(CONF, ENABLE)
    rig.run_to(5000 + 10 * 0x20)
    assert rig.r64(COUNT) == 0x1_0000_0010  # 64 bits, no wrap at 2^32
    rig.w(COUNT, 0)  # lost while enabled
    rig.run_to(5000 + 10 * 0x30)
    rig.w(CONF, 0)
    frozen = rig.r64(COUNT)
    assert frozen == 0x1_0000_0020
    rig.run_to(10**6)
    assert rig.r64(COUNT) == frozen


# --- timers and interrupts ------------------------------------------------------------


def test_one_shot_edge_timer_pulses_its_route_once() -> None:
    rig = Rig()
    rig.w64(tcmp(2), 1000)
    rig.w(tconf(2), INT_ENB | route(17))
    rig.w(CONF, ENABLE)
    rig.run_to(50_000)
    assert rig.take() == [(10_000, "raise", 17), (10_000, "lower", 17)]
    assert rig.r(ISR) == 0  # edge expiries leave no status


def test_level_timer_sets_status_and_write_one_clears_it() -> None:
    rig = Rig()
    rig.w64(tcmp(1), 300)
    rig.w(tconf(1), LEVEL | INT_ENB | route(16))
    rig.w(CONF, ENABLE)
    rig.run_to(10_000)
    assert rig.take() == [(3000, "raise", 16)] and rig.r(ISR) == 2
    rig.w(ISR, 0xFFFFFFFD)  # bits without a pending status are ignored
    assert rig.r(ISR) == 2 and rig.take() == []
    rig.w(ISR, 2)
    assert rig.r(ISR) == 0 and rig.take() == [(10_000, "lower", 16)]


def test_level_status_is_set_even_with_interrupts_disabled() -> None:
    rig = Rig()
    rig.w64(tcmp(0), 10)
    rig.w(tconf(0), LEVEL | route(20))
    rig.w(CONF, ENABLE)
    rig.run_to(1000)
    assert rig.r(ISR) == 1 and rig.take() == []  # 7.2 clears the status instead
    rig.w(tconf(0), LEVEL | INT_ENB | route(20))  # enabling re-raises the pending level
    assert rig.take() == [(1000, "raise", 20)]
    rig.w(tconf(0), INT_ENB | route(20))  # level -> edge drops status and line
    assert rig.r(ISR) == 0 and rig.take() == [(1000, "lower", 20)]


def test_disabling_the_hpet_keeps_level_status_and_enabling_re_raises() -> None:
    rig = Rig()
    rig.w64(tcmp(0), 10)
    rig.w(tconf(0), LEVEL | INT_ENB | route(18))
    rig.w(CONF, ENABLE)
    rig.run_to(500)
    rig.w(CONF, 0)
    assert rig.r(ISR) == 1  # 7.2 wipes it
    assert rig.take() == [(100, "raise", 18), (500, "lower", 18)]
    rig.w(CONF, ENABLE)
    assert rig.take()[0] == (500, "raise", 18)


def test_periodic_timer_advances_its_comparator_with_the_exact_deadline_double_pulse() -> None:
    rig = Rig()
    rig.w(tconf(0), PERIODIC | VAL_SET | INT_ENB | route(2))
    rig.w(tcmp(0), 1000, 8)  # 10 us, then every 10 us (8 bytes: VAL_SET covers both halves)
    rig.w(CONF, ENABLE)
    rig.run_to(35_000)
    raises = [ns for ns, kind, _ in rig.take() if kind == "raise"]
    # a callback exactly at the comparator does not advance it: a second pulse 1 us later
    assert raises == [10_000, 11_000, 20_000, 21_000, 30_000, 31_000]
    assert rig.r64(tcmp(0)) == 4000


def test_periodic_timer_storm_clamp_keeps_pulses_1us_apart() -> None:
    rig = Rig()
    rig.w(tconf(0), PERIODIC | VAL_SET | INT_ENB | route(2))
    rig.w(tcmp(0), 1, 8)  # 10 ns period
    rig.w(CONF, ENABLE)
    rig.run_to(5_500)
    raises = [ns for ns, kind, _ in rig.take() if kind == "raise"]
    assert raises == [1000, 2000, 3000, 4000, 5000]


def test_32bit_one_shot_interrupts_at_the_wrap_and_at_the_match() -> None:
    rig = Rig()
    rig.w64(COUNT, 0xFFFF_FF00)
    rig.w(tconf(0), MODE32 | INT_ENB | route(2))
    rig.w(tcmp(0), 0x100)
    rig.w(CONF, ENABLE)
    rig.run_to(100_000)
    raises = [ns for ns, kind, _ in rig.take() if kind == "raise"]
    assert raises == [0x100 * 10, 0x200 * 10]


def test_32bit_periodic_comparator_wraps_in_32_bits() -> None:
    rig = Rig()
    rig.w64(COUNT, 0xFFFF_FF00)
    rig.w(tconf(0), MODE32 | PERIODIC | VAL_SET | INT_ENB | route(2))
    rig.w(tcmp(0), 0xFFFF_FF80)
    rig.w(tcmp(0), 0x100)
    rig.w(CONF, ENABLE)
    rig.run_to(0x190 * 10)
    assert rig.r64(tcmp(0)) == 0x80


def test_legacy_replacement_routes_timer_0_to_line_2_and_timer_1_to_line_8() -> None:
    rig = Rig()
    for n in (0, 1):
        rig.w64(tcmp(n), 100 * (n + 1))
        rig.w(tconf(n), LEVEL | INT_ENB | route(20))
    rig.w(CONF, ENABLE | LEGACY)
    assert not rig.hpet.pit_enabled.level
    rig.run_to(5000)
    assert [e for e in rig.take() if e[1] == "raise"] == [(1000, "raise", 2), (2000, "raise", 8)]
    rig.w(CONF, ENABLE)  # leaving legacy mode lets go of both lines
    assert rig.take() == [(5000, "lower", 2), (5000, "lower", 8)]
    assert rig.hpet.pit_enabled.level


def test_legacy_inputs_are_forwarded_until_legacy_mode_takes_the_lines() -> None:
    rig = Rig()
    pit, rtc = rig.hpet.inputs
    pit.set(True)
    rtc.set(True)
    assert rig.take() == [(0, "raise", 2), (0, "raise", 8)]
    rig.w(CONF, LEGACY)
    assert rig.take() == [(0, "lower", 2), (0, "lower", 8)]
    rtc.set(False)
    rtc.set(True)
    pit.set(False)
    assert rig.take() == [] and rig.hpet.rtc_irq_level == 1
    rig.w(CONF, 0)  # the RTC line gets the remembered level back
    assert rig.take() == [(0, "raise", 8)]


def test_fsb_delivery_writes_the_message_instead_of_a_line() -> None:
    rig = Rig(msi=True)
    rig.w(tfsb(2), 0x41)
    rig.w(tfsb(2) + 4, 0x8000_1000)
    rig.w64(tcmp(2), 50)
    rig.w(tconf(2), FSB_EN | LEVEL | INT_ENB | route(16))
    rig.w(CONF, ENABLE)
    rig.run_to(1000)
    assert rig.stores == [(500, 0x8000_1000, 0x41)]
    assert rig.take() == [] and rig.r(ISR) == 4  # newest QEMU: status as for a line


def test_reset_restores_timers_but_keeps_fsb_and_unimplemented_timer() -> None:
    rig = Rig()
    rig.w(tfsb(0), 7)
    rig.w64(tcmp(1), 99)
    rig.w(tconf(1), INT_ENB | PERIODIC)
    rig.w(CONF, ENABLE | LEGACY)
    rig.hpet.reset()
    assert rig.r(tfsb(0)) == 7
    assert rig.r64(tcmp(1)) == M64 and rig.r(tconf(1)) == 0x30
    assert rig.r(CONF) == 0 and rig.r64(COUNT) == 0
    assert not any(t.qemu_timer.pending for t in rig.hpet.timers)


def test_catch_up_matches_the_loop() -> None:
    def loop(cmp64: int, cur: int, period: int) -> int:
        while (cmp64 - cur) & M64 >= 1 << 63:
            cmp64 = (cmp64 + period) & M64
        return cmp64

    cases = [(0, 10, 3), (10, 10, 3), (M64, 5, 7), (5, 1000, 1), (0, 1 << 62, 1 << 61),
             (0, 10, (1 << 63) + 5), (0, (1 << 63) - 5, 1 << 63), (7, 3, M64)]
    for cmp64, cur, period in cases:
        assert catch_up(cmp64, cur, period) == loop(cmp64, cur, period)
    assert catch_up(0, 1 << 62, 3) == ((1 << 62) + 2)  # no loop over 2^61 periods


# --- deadlines 2^63 ns or more away (issue 15) ------------------------------------------


def count_firings(timer: Any, per_pass: int) -> list[int]:
    """Count a timer's callbacks; more than `per_pass` in one run of the timers is the
    unbounded loop this guards against (raised as an error instead of a hang)."""
    fired = [0]
    callback = timer.callback

    def counted() -> None:
        fired[0] += 1
        if fired[0] > per_pass:
            raise AssertionError("the timer loop keeps firing at the same instant")
        callback()
    timer.callback = counted
    return fired


def arm_far_periodic(write: Callable[[int, int], None]) -> None:
    """The three stores of issue 15: periodic timer 0, period 2^60 ticks, then enable."""
    write(tconf(0), INT_ENB | PERIODIC)
    write(tcmp(0) + 4, 0x1000_0000)  # periodic without VAL_SET: the period's high half
    write(CONF, ENABLE)


def test_a_deadline_past_2_63_ns_fires_once_per_instant_without_looping() -> None:
    rig = Rig()
    arm_far_periodic(rig.w)
    t = rig.hpet.timers[0]
    fired = count_firings(t.qemu_timer, per_pass=1)
    rig.clock.run_timers()
    # QEMU's arithmetic: tick * 10 wraps past 2^63 to a deadline in the past, so the
    # timer fires at once, and the catch-up adds one period to the all-ones comparator.
    assert fired == [1] and rig.r64(tcmp(0)) == (1 << 60) - 1
    assert rig.take() == [(0, "raise", 0), (0, "lower", 0)]
    # Re-armed into the past again, it waits for the next step (1 ns at shift 0).
    assert rig.clock.next_deadline() == 1
    for step in range(1, 4):
        fired[0] = 0
        rig.clock.now_ns = step
        rig.clock.run_timers()
        assert fired == [1]
    assert [ns for ns, kind, _ in rig.take() if kind == "raise"] == [1, 2, 3]
    assert rig.r64(tcmp(0)) == (1 << 60) - 1  # the comparator is not ahead of the counter


def test_a_machine_with_a_far_hpet_deadline_runs_and_time_advances() -> None:
    machine = boot(IMAGES / "counter.elf")
    assert machine.run_until_poweroff(max_insns=1000) is None
    arm_far_periodic(lambda offset, value: machine.bus.write(HPET_BASE + offset, value, 4))
    count_firings(machine.device("hpet").timers[0].qemu_timer, per_pass=50_000)
    start_ns, start_icount = machine.clock.now_ns, machine.clock.icount
    assert machine.run_until_poweroff(max_insns=20_000) is None  # returns at its budget
    assert machine.clock.icount == start_icount + 20_000
    assert machine.clock.now_ns == start_ns + 20_000
    assert machine.device("hpet").info()["timers"][0]["deadline_ns"] == machine.clock.now_ns + 1


async def test_the_monitor_reproduction_keeps_the_daemon_answering(tmp_path: Path) -> None:
    sock = str(tmp_path / "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(IMAGES / "counter.elf"), "--qmp",
        f"unix:{sock}", "-S", "-serial", "null", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"QMP listening" in await asyncio.wait_for(proc.stderr.readline(), 30)
        qmp = QMPClient("hpet-test")
        await asyncio.wait_for(qmp.connect(sock), 30)

        async def hmp(line: str) -> str:
            result = await asyncio.wait_for(
                qmp.execute("human-monitor-command", {"command-line": line}), 60)
            assert isinstance(result, str)
            return result
        for line in ("write 0xfed00100 0xc 4", "write 0xfed0010c 0x10000000 4",
                     "write 0xfed00010 1 4", "run-for 20us"):
            await hmp(line)
        clock = await asyncio.wait_for(qmp.execute("x-emud-query-clock"), 30)
        assert isinstance(clock, dict) and clock["ns"] >= 20_000
        await qmp.execute("cont")
        assert (await asyncio.wait_for(qmp.execute("query-status"), 30))["running"]
        await qmp.execute("quit")
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def test_info_reports_modes_routes_and_deadlines() -> None:
    rig = Rig()
    rig.w(tconf(1), PERIODIC | VAL_SET | INT_ENB | MODE32 | route(19))
    rig.w(tcmp(1), 0x40)
    rig.w(CONF, ENABLE)
    info = rig.hpet.info()
    assert info["enabled"] and not info["legacy"] and info["num_timers"] == 3
    t1 = info["timers"][1]
    assert t1["mode"] == "periodic" and t1["size"] == 32 and t1["trigger"] == "edge"
    assert t1["route"] == 19 and t1["plic_source"] == 51
    assert t1["deadline_ns"] == 1000  # 640 ns, but periodic re-arms keep 1 us from the last


# --- board ----------------------------------------------------------------------------


def test_board_wires_line_n_to_plic_source_32_plus_n_and_fsb_to_the_bus() -> None:
    machine = Machine(RingBackend())
    bus = machine.bus
    bus.write(HPET_BASE + tconf(0), LEVEL | INT_ENB | route(23), 4)
    bus.write(HPET_BASE + tcmp(0), 10, 4)
    bus.write(HPET_BASE + tcmp(0) + 4, 0, 4)
    bus.write(HPET_BASE + tfsb(1), 0xCAFE, 4)
    bus.write(HPET_BASE + tfsb(1) + 4, RAM_BASE + 0x100, 4)
    bus.write(HPET_BASE + tconf(1), FSB_EN | INT_ENB, 4)
    bus.write(HPET_BASE + tcmp(1), 20, 4)
    bus.write(HPET_BASE + tcmp(1) + 4, 0, 4)
    bus.write(HPET_BASE + tconf(2), FSB_EN | INT_ENB, 4)  # FSB address 0: nothing there
    bus.write(HPET_BASE + tcmp(2), 20, 4)
    bus.write(HPET_BASE + tcmp(2) + 4, 0, 4)
    bus.write(HPET_BASE + CONF, ENABLE, 4)
    machine.clock.advance_insns(1000)
    assert machine.device("plic").inputs[HPET_IRQ_BASE + 23].level
    assert bus.read(RAM_BASE + 0x100, 4) == 0xCAFE


def test_guest_takes_a_legacy_hpet_interrupt_through_the_plic(
        build_asm: Callable[[str], Path]) -> None:
    image = build_asm("""
.globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li t0, 0x0c000088       # PLIC priority[34] = 1 (HPET line 2)
    li t1, 1
    sw t1, 0(t0)
    li t0, 0x0c002004       # enable bit 34
    li t1, 4
    sw t1, 0(t0)
    li s0, 0xfed00000
    li t1, 100000           # timer 0 comparator: 1 ms
    sw t1, 0x108(s0)
    sw zero, 0x10c(s0)
    li t1, 6                # level, INT_ENB
    sw t1, 0x100(s0)
    li t1, 3                # ENABLE | LEG_RT
    sw t1, 0x10(s0)
    li t0, 0x800
    csrw mie, t0
    csrsi mstatus, 8
1:  wfi
    j 1b
.align 2
handler:
    li t0, 0x0c200004
    lw a0, 0(t0)            # claim
    li t1, 34
    bne a0, t1, fail
    lw t1, 0xf0(s0)         # the counter passed the comparator
    li t2, 100000
    bltu t1, t2, fail
""" + PASS_OR_FAIL)
    machine = boot(image)
    assert machine.run_until_poweroff(max_insns=100_000) == 0
    assert 1_000_000 <= machine.clock.now_ns < 1_100_000


# --- migration ------------------------------------------------------------------------

# The 7.2 dumps of hpet.md §13.1: pc-i440fx, 3 timers, enabled with LEG_RT, counter 0x99,
# timer 0 level/periodic with cmp 0x1234 (low half only) and period 0x5678, never ran.
QEMU_72_HPET = bytes.fromhex(
    "04 00000012 04" + b"hpet".hex() + "00000000 00000002"
    "0000000000000003 0000000000000000 0000000000000099"
    "03"
    "00 000000040000003e ffffffff00001234 00000000fee00000 0000000000005678 00 000000000000000a"
    "01 0000000400000030 ffffffffffffffff 0000000000000000 0000000000000000 00 ffffffffffffffff"
    "02 0000000400000030 ffffffffffffffff 0000000000000000 0000000000000000 00 ffffffffffffffff"
    "05 0b" + b"hpet/offset".hex() + "00000001 00000000000005fa"
    "7e 00000012"
)
RTC_SUBSECTION = bytes.fromhex("05 12" + b"hpet/rtc_irq_level".hex() + "00000001 01")
QEMU_72_HPET_RTC = QEMU_72_HPET.replace(b"\x05\x0bhpet/offset", RTC_SUBSECTION
                                        + b"\x05\x0bhpet/offset")


def test_qemu_72_dump_loads_into_the_model() -> None:
    rig = Rig()
    header = VMSTATE_HPET.load_section(rig.hpet, QEMU_72_HPET)
    assert (header.section_id, header.idstr, header.version_id) == (18, "hpet", 2)
    assert rig.r64(CONF) == ENABLE | LEGACY
    assert rig.r64(COUNT) == 0x99  # offset 0x5fa ns at virtual time 0
    assert rig.r64(tconf(0)) == 0x4_0000003E
    assert rig.r64(tcmp(0)) == 0xFFFFFFFF_00001234
    assert rig.r64(tfsb(0)) == 0xFEE00000
    assert rig.hpet.timers[0].period == 0x5678
    assert rig.hpet.timers[0].qemu_timer.expire_time == 10
    assert not rig.hpet.timers[1].qemu_timer.pending
    assert rig.hpet.num_timers == 3 and rig.r(GCAP) == 0x8086A201
    rig.run_to(10)  # the timer QEMU armed fires: level, legacy timer 0
    assert rig.r(ISR) == 1 and rig.take()[0] == (10, "raise", 2)


def test_saving_the_loaded_state_gives_qemus_bytes() -> None:
    for dump in (QEMU_72_HPET, QEMU_72_HPET_RTC):
        rig = Rig()
        VMSTATE_HPET.load_section(rig.hpet, dump)
        assert VMSTATE_HPET.save_section(rig.hpet, 18) == dump


def test_rtc_subsection_restores_the_remembered_level() -> None:
    rig = Rig()
    VMSTATE_HPET.load_section(rig.hpet, QEMU_72_HPET_RTC)
    assert rig.hpet.rtc_irq_level == 1
    rig.w(CONF, ENABLE)  # leaving legacy mode hands line 8 the RTC level
    assert (0, "raise", 8) in rig.take()


def test_register_writes_reproduce_the_dump_up_to_the_newest_arming_rule() -> None:
    rig = Rig(**{"hpet-intcap": 4})
    rig.w(COUNT, 0x99)
    rig.w(tconf(0), 0x4E)  # level, INT_ENB, periodic, VAL_SET
    rig.w(tcmp(0), 0x1234)  # comparator (VAL_SET), cmp = 0xffffffff_00001234
    rig.w(tcmp(0), 0x5678)  # period
    rig.w(tfsb(0), 0xFEE00000)
    rig.w(CONF, ENABLE | LEGACY)
    ours = VMSTATE_HPET.save_section(rig.hpet, 18)
    # Newest QEMU arms every timer at enable and clamps the (negative) deadlines to 0;
    # 7.2 armed only timer 0, one tick ahead (hpet.md §5, §10).
    expected = bytearray(QEMU_72_HPET)
    timer0 = QEMU_72_HPET.index(bytes.fromhex("000000000000000a"))
    expected[timer0:timer0 + 8] = bytes(8)
    for n in (1, 2):
        at = expected.index(bytes([n]) + bytes.fromhex("0000000400000030"))
        expected[at + 34:at + 42] = bytes(8)
    assert ours == bytes(expected)


def test_description_matches_qemus_vmdesc() -> None:
    rig = Rig()
    VMSTATE_HPET.load_section(rig.hpet, QEMU_72_HPET)
    timer_fields = [("tn", "uint8", 1), ("config", "uint64", 8), ("cmp", "uint64", 8),
                    ("fsb", "uint64", 8), ("period", "uint64", 8), ("wrap_flag", "uint8", 1),
                    ("qemu_timer", "timer", 8)]
    assert VMSTATE_HPET.describe(rig.hpet) == {
        "name": "hpet", "instance_id": 0, "vmsd_name": "hpet", "version": 2,
        "fields": [
            {"name": "config", "type": "uint64", "size": 8},
            {"name": "isr", "type": "uint64", "size": 8},
            {"name": "hpet_counter", "type": "uint64", "size": 8},
            {"name": "num_timers_save", "type": "uint8", "size": 1},  # 7.2: num_timers
            {"name": "timer", "array_len": 3, "type": "struct", "struct": {
                "vmsd_name": "hpet_timer", "version": 1,
                "fields": [{"name": n, "type": t, "size": s} for n, t, s in timer_fields]},
             "size": 42},
        ],
        "subsections": [{"vmsd_name": "hpet/offset", "version": 1,
                         "fields": [{"name": "hpet_offset", "type": "uint64", "size": 8}]}],
    }


def test_a_stream_with_another_timer_count_is_refused_and_changes_nothing() -> None:
    rig = Rig(timers=4)
    rig.w(tcmp(3), 0x77)
    before = VMSTATE_HPET.save(rig.hpet)
    with pytest.raises(VMStateError) as info:
        VMSTATE_HPET.load_section(rig.hpet, QEMU_72_HPET)
    assert str(info.value) == ("hpet: field 'num_timers_save': num_timers must match: the "
                               "stream has 3 timers, this hpet has 4 (property 'timers')")
    assert rig.hpet.num_timers == 4 and rig.r(GCAP) == 0x8086A301
    assert VMSTATE_HPET.save(rig.hpet) == before


def test_version_1_streams_are_too_old_for_the_newest_layout() -> None:
    with pytest.raises(VMStateError, match="hpet version 1 is older than the minimum 2"):
        VMSTATE_HPET.load(Rig().hpet, QEMU_72_HPET[18:], 1)


def test_a_timer_carrying_another_index_is_refused() -> None:
    bad = bytearray(QEMU_72_HPET)
    bad[bad.index(bytes.fromhex("01 0000000400000030"))] = 7
    with pytest.raises(VMStateError, match="timer 1 carries index 7"):
        VMSTATE_HPET.load_section(Rig().hpet, bytes(bad))


def test_without_offset_saved_the_offset_is_rebuilt_from_the_counter() -> None:
    src = Rig(**{"hpet-offset-saved": False})
    src.w(CONF, ENABLE)
    src.run_to(12_340)
    data = VMSTATE_HPET.save(src.hpet)
    assert b"hpet/offset" not in data
    dst = Rig(**{"hpet-offset-saved": False})
    dst.clock.now_ns = 500_000
    VMSTATE_HPET.load(dst.hpet, data, 2)
    assert dst.r64(COUNT) == 1234
    dst.run_to(500_100)
    assert dst.r64(COUNT) == 1244


def test_migration_keeps_timers_firing_at_the_same_virtual_time() -> None:
    src = Rig()
    src.w(tconf(0), PERIODIC | VAL_SET | INT_ENB | LEVEL | route(21))
    src.w(tcmp(0), 250, 8)
    src.w64(tcmp(2), 777)
    src.w(tconf(2), INT_ENB | route(22))
    src.w(CONF, ENABLE)
    src.run_to(3_000)
    src.w(ISR, 1)
    data = VMSTATE_HPET.save(src.hpet)
    dst = Rig()
    dst.clock.now_ns = 3_000
    VMSTATE_HPET.load(dst.hpet, data, 2)
    src.take()
    dst.take()
    src.run_to(9_000)
    dst.run_to(9_000)
    assert dst.take() == src.take()
    assert dst.r64(tcmp(0)) == src.r64(tcmp(0))


# --- properties of the model (hypothesis) ---------------------------------------------

GLOBAL_OFFSETS = [GCAP, 0x004, 0x008, CONF, 0x014, ISR, 0x024, COUNT, 0x0F4]
# timers 0..2 are implemented; 3 (== num_timers) is reachable but not migrated; 4 is not
OFFSETS = GLOBAL_OFFSETS + [tconf(n) + k for n in range(5) for k in range(0, 0x20, 4)]
MIGRATED = GLOBAL_OFFSETS + [tconf(n) + k for n in range(3) for k in range(0, 0x20, 4)]
# values with a good chance of meaningful bits
VALUES = st.one_of(st.integers(0, M32), st.sampled_from(
    [0, 1, 2, 3, 4, 6, 8, 0x4E, 0x10C, 0x4004, 0x2006, 0x14C, 0xFFFFFFFF, 10, 100]))
Op = tuple[str, int, int, int]


def ops(offsets: list[int]) -> st.SearchStrategy[list[Op]]:
    return st.lists(st.one_of(
        st.tuples(st.just("w"), st.sampled_from(offsets), VALUES, st.sampled_from([4, 4, 8])),
        st.tuples(st.just("r"), st.sampled_from(offsets), st.just(0), st.sampled_from([4, 8])),
        st.tuples(st.just("t"), st.just(0), st.integers(0, 20_000), st.just(0)),
        st.tuples(st.just("i"), st.integers(0, 1), st.integers(0, 1), st.just(0)),
    ), max_size=40)


def apply_ops(rig: Rig, ops: list[Op]) -> None:
    for kind, offset, value, size in ops:
        if kind == "w":
            rig.w(offset & ~(size - 1), value | (value << 32 if size == 8 else 0), size)
        elif kind == "r":
            rig.r(offset & ~(size - 1), size)
        elif kind == "t":
            rig.run_to(rig.clock.now_ns + value)
        else:
            rig.hpet.inputs[offset].set(bool(value))


def register_view(rig: Rig) -> list[int]:
    return [rig.hpet.peek(offset, 4) for offset in MIGRATED]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops(OFFSETS))
def test_random_register_writes_never_raise(steps: list[Op]) -> None:
    rig = Rig()
    apply_ops(rig, steps)
    rig.hpet.info()
    VMSTATE_HPET.save(rig.hpet)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops(MIGRATED), later=st.integers(0, 5000))
def test_save_then_load_gives_identical_reads(steps: list[Op], later: int) -> None:
    src = Rig()
    apply_ops(src, steps)
    data = VMSTATE_HPET.save(src.hpet)
    dst = Rig()
    dst.clock.now_ns = src.clock.now_ns
    dst.hpet.inputs[0].set(src.hpet.inputs[0].level)  # the PIT keeps its own state
    VMSTATE_HPET.load(dst.hpet, data, 2)
    assert register_view(dst) == register_view(src)
    deadlines = [(t.qemu_timer.pending, t.qemu_timer.expire_time) for t in src.hpet.timers[:3]]
    assert [(t.qemu_timer.pending, t.qemu_timer.expire_time)
            for t in dst.hpet.timers[:3]] == deadlines
    if not any(t.config & FSB_EN for t in src.hpet.timers):  # FSB_EN 0->1 leaves a line up
        # A line the PIT or RTC input holds up is up after the load (the load drives each
        # line to what the state implies), even where a timer routed there lowered it in
        # the source since: QEMU's line is the last writer's, which no state records.
        held = {line for line, level in ((ISA_IRQ0_LINE, src.hpet.pit_in.level),
                                         (RTC_ISA_IRQ, src.hpet.rtc_irq_level))
                if level and not src.hpet.legacy}
        assert all(dst.hpet.irqs[line].level for line in held)
        assert [irq.level for n, irq in enumerate(dst.hpet.irqs) if n not in held] == \
            [irq.level for n, irq in enumerate(src.hpet.irqs) if n not in held]
    assert VMSTATE_HPET.save(dst.hpet) == VMSTATE_HPET.save(src.hpet)
    src.run_to(src.clock.now_ns + later)
    dst.run_to(dst.clock.now_ns + later)
    assert dst.r64(COUNT) == src.r64(COUNT)
