"""Monitor run control that waits or works long: run-for and step yield to the loop,
end early on `stop`, and leave nothing armed behind them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, boot
from emud.chardev import RingBackend
from emud.daemon import Daemon
from emud.machine import Machine
from emud.monitor import Monitor, MonitorError

TIMEOUT = 10.0
MAX_TURNS = 100_000  # loop turns a test may wait for the daemon to get somewhere


@asynccontextmanager
async def running(image: Path) -> AsyncIterator[tuple[Monitor, Machine]]:
    """A paused daemon serving its loop, and a monitor on it."""
    machine = boot(image)
    daemon = Daemon(machine, start_paused=True, exit_on_poweroff=False)
    task = asyncio.create_task(daemon.run())
    try:
        yield Monitor(daemon), machine
    finally:
        daemon.quit()
        await asyncio.wait_for(task, TIMEOUT)


def ring(machine: Machine) -> RingBackend:
    assert isinstance(machine.serial, RingBackend)
    return machine.serial


async def turns_until(condition: Any) -> None:
    """Give the loop turns (no wall clock) until `condition()` holds."""
    for _ in range(MAX_TURNS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the daemon never got there")


async def test_run_for_on_a_running_guest_asleep_without_timers() -> None:
    async with running(IMAGES / "uart_echo.elf") as (monitor, machine):
        await monitor.execute_hmp("cont")
        await turns_until(lambda: machine.hart.waiting and b"ready" in bytes(ring(machine).buffer))
        start = machine.clock.now_ns
        result = await asyncio.wait_for(monitor.execute_qmp("x-emud-run-for",
                                                            {"duration": "1ms"}), TIMEOUT)
        assert result["completed"] and machine.clock.now_ns == start + 1_000_000
        assert result["target-ns"] == start + 1_000_000
        assert monitor.daemon.status == "paused"
        assert machine.clock.next_deadline() > machine.clock.now_ns + 10**15  # nothing left
        # Resumed, the guest takes input and keeps running: no stale run-for pauses it.
        await monitor.execute_hmp("cont")
        await monitor.execute_hmp('ringbuf_write serial0 "z"')
        await turns_until(lambda: bytes(ring(machine).buffer).endswith(b"z"))
        await turns_until(lambda: machine.hart.waiting)
        assert monitor.daemon.running


@pytest.mark.parametrize("duration", ["1e30", "1.0e30", "1.5e400s", "inf", "nan", "3601s",
                                      "3600000000001", "9" * 5000])
async def test_run_for_refuses_what_it_cannot_reach(duration: str) -> None:
    async with running(IMAGES / "counter.elf") as (monitor, machine):
        with pytest.raises(MonitorError, match="duration"):
            await asyncio.wait_for(monitor.execute_hmp(f"run-for {duration}"), TIMEOUT)
        assert monitor.daemon.status == "prelaunch" and machine.clock.icount == 0


async def test_stop_from_another_client_ends_run_for_early() -> None:
    async with running(IMAGES / "counter.elf") as (monitor, machine):
        other = monitor.fork()
        waiting = asyncio.create_task(monitor.execute_hmp("run-for 3600s"))
        await turns_until(lambda: machine.clock.icount > 100_000)
        assert (await other.execute_qmp("x-emud-query-clock", {}))["run-for-target"] == \
            3600 * 10**9
        await other.execute_hmp("stop")
        text = await asyncio.wait_for(waiting, TIMEOUT)
        first, where = text.splitlines()
        assert first == (f"stopped at {machine.clock.now_ns} ns, before the target "
                         f"{3600 * 10**9} ns (paused)")
        assert where.startswith(f"0x{machine.hart.pc:08x}:  ")
        assert (await other.execute_qmp("x-emud-query-clock", {}))["run-for-target"] is None
        assert machine.clock.next_deadline() > 3600 * 10**9  # its timer is gone


async def test_a_long_step_yields_and_stop_ends_it() -> None:
    async with running(IMAGES / "counter.elf") as (monitor, machine):
        other = monitor.fork()
        stepping = asyncio.create_task(monitor.execute_qmp("x-emud-step", {"count": 10_000_000}))
        await turns_until(lambda: machine.clock.icount > 50_000)
        # The loop serves other clients in the middle of the step.
        status = await other.execute_qmp("query-status", {})
        assert status == {"running": False, "status": "prelaunch"}
        assert machine.clock.icount < 10_000_000 and not stepping.done()
        with pytest.raises(MonitorError, match="another step is in progress"):
            await other.execute_hmp("step 5")
        await other.execute_hmp("stop")
        result = await asyncio.wait_for(stepping, TIMEOUT)
        assert result["count"] == 10_000_000
        assert 50_000 < result["executed"] == machine.clock.icount < 10_000_000
        assert result["pc"] == machine.hart.pc and not monitor.daemon.running


async def test_cont_during_a_step_hands_the_hart_to_the_run_loop() -> None:
    async with running(IMAGES / "counter.elf") as (monitor, machine):
        other = monitor.fork()
        stepping = asyncio.create_task(monitor.execute_hmp("step 10000000"))
        await turns_until(lambda: machine.clock.icount > 50_000)
        await other.execute_hmp("cont")
        text = await asyncio.wait_for(stepping, TIMEOUT)
        assert text.startswith("stopped after ") and "of 10000000 steps (running)" in text
        assert monitor.daemon.running and not monitor.daemon.stepping


async def test_step_count_matches_single_slices_across_slice_boundaries() -> None:
    reference = boot(IMAGES / "counter.elf")
    for _ in range(45_001):
        reference.run_slice(1)
    async with running(IMAGES / "counter.elf") as (monitor, machine):
        result = await monitor.execute_qmp("x-emud-step", {"count": 45_001})
        assert result["executed"] == 45_001 == machine.clock.icount
        assert machine.hart.pc == reference.hart.pc and machine.hart.x == reference.hart.x
        assert machine.ram.data == reference.ram.data
