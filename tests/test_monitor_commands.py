"""Monitor commands against a running daemon: run control, devices, chardevs, hooks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import IMAGES, boot
from emud import trace
from emud.daemon import Daemon
from emud.machine import Machine
from emud.monitor import Monitor, MonitorError

TIMEOUT = 10.0


@asynccontextmanager
async def running(image: Path) -> AsyncIterator[tuple[Monitor, Machine]]:
    """A paused daemon serving its loop, and a monitor on it."""
    machine = boot(image)
    daemon = Daemon(machine, start_paused=True, exit_on_poweroff=False)
    monitor = Monitor(daemon)
    task = asyncio.create_task(daemon.run())
    try:
        yield monitor, machine
    finally:
        daemon.quit()
        await asyncio.wait_for(task, TIMEOUT)


async def hmp(monitor: Monitor, line: str) -> str:
    return await asyncio.wait_for(monitor.execute_hmp(line), TIMEOUT)


async def test_run_for_is_exact_and_deterministic() -> None:
    states = []
    for _ in range(2):
        async with running(IMAGES / "hpet_timers.elf") as (monitor, machine):
            await hmp(monitor, "run-for 150us")
            assert machine.clock.now_ns == 150_000
            assert (await hmp(monitor, "info status")) == "VM status: paused\n"
            states.append((list(machine.hart.x), machine.hart.pc, machine.clock.icount,
                           await hmp(monitor, "info hpet"), bytes(machine.ram.data)))
    assert states[0] == states[1]


async def test_step_matches_single_slices() -> None:
    reference = boot(IMAGES / "traps.elf")
    for _ in range(25):
        reference.run_slice(1)
    async with running(IMAGES / "traps.elf") as (monitor, machine):
        text = await hmp(monitor, "step 25")
        assert machine.hart.pc == reference.hart.pc and machine.hart.x == reference.hart.x
        assert text.startswith(f"0x{reference.hart.pc:08x}:  ")
    async with running(IMAGES / "uart_echo.elf") as (monitor, machine):  # never ends by itself
        await hmp(monitor, "cont")
        with pytest.raises(MonitorError, match="stop it first"):
            await hmp(monitor, "step")


async def test_guest_power_off_needs_a_reset() -> None:
    async with running(IMAGES / "hello.elf") as (monitor, machine):
        events: list[str] = []
        monitor.daemon.listeners.append(lambda name, data: events.append(name))
        await hmp(monitor, "run-for 1s")  # hello powers off long before
        assert (await hmp(monitor, "info status")) == "VM status: paused (shutdown)\n"
        assert events == ["RESUME", "SHUTDOWN"]
        with pytest.raises(MonitorError, match="Resetting the Virtual Machine is required"):
            await hmp(monitor, "cont")
        await hmp(monitor, "system_reset")
        assert (await hmp(monitor, "info status")) == "VM status: paused\n"
        assert machine.image is not None and machine.hart.pc == machine.image.entry
        await hmp(monitor, "run-for 1s")  # runs again, to its power-off
        assert events == ["RESUME", "SHUTDOWN", "RESET", "RESUME", "SHUTDOWN"]


async def test_ringbuf_reaches_the_guest_and_back() -> None:
    async with running(IMAGES / "uart_echo.elf") as (monitor, machine):
        await hmp(monitor, "run-for 1ms")
        assert await hmp(monitor, "ringbuf_read serial0 100") == "echo: ready\n"
        await hmp(monitor, 'ringbuf_write serial0 "ab\\\\c"')
        await hmp(monitor, "run-for 1ms")
        # HMP's ringbuf_read doubles a backslash, like QEMU's
        assert await hmp(monitor, "ringbuf_read serial0 100") == "ab\\\\c\n"
        info = await monitor.execute_qmp("x-emud-query-irq", {})
        plic = next(i for i in info if i["controller"] == "plic")
        assert plic["counts"].get(10, 0) >= 1 and plic["names"][10] == "uart0.irq"
        assert await monitor.execute_qmp("ringbuf-read", {"device": "serial0", "size": 9}) == ""
        pl011 = await hmp(monitor, "info pl011")
        assert "IMSC   0x0010 [RX]" in pl011 and "WLEN=8" in pl011
        # The line it drives is PLIC source 10 (the README's memory map), low once read.
        assert pl011.startswith("uart0 @ 0x0000000010000000: chardev serial0, "
                                "PLIC source 10 (line low)\n")
        assert (await monitor.execute_qmp("x-emud-query-pl011", {}))["plic-source"] == 10


async def test_info_hpet_shows_the_device_state() -> None:
    async with running(IMAGES / "hpet_timers.elf") as (monitor, machine):
        await hmp(monitor, "run-for 120us")
        state = machine.device("hpet").info()
        assert await monitor.execute_qmp("x-emud-query-hpet", {}) == state | {
            "base": 0xFED00000, "id": "hpet", "type": "hpet", "plic-source": 32}
        text = (await hmp(monitor, "info hpet")).splitlines()
        rows = [line for line in text if line.startswith(" T")]
        assert len(rows) == state["num_timers"]
        for row, timer in zip(rows, state["timers"], strict=True):
            deadline = timer["deadline_ns"]
            assert row.endswith("--" if deadline is None else
                                f"{deadline} ns (+{deadline - machine.clock.now_ns})")
            assert f"0x{timer['comparator']:016x}" in row


@pytest.fixture
def trace_state() -> Iterator[None]:
    saved = {ev.name: ev.enabled for ev in trace.events()}
    yield
    for ev in trace.events():
        ev.enabled = saved.get(ev.name, False)


async def test_trace_events_by_glob(trace_state: None) -> None:
    async with running(IMAGES / "hello.elf") as (monitor, _):
        await hmp(monitor, "trace-event pl011_* on")
        expected = [ev.name for ev in trace.events("pl011_*")]
        assert expected and all(ev.enabled for ev in trace.events("pl011_*"))
        listing = (await hmp(monitor, "info trace-events pl011_*")).splitlines()
        assert listing == [f"{name} : state 1" for name in expected]
        await hmp(monitor, "trace-event pl011_* off")
        assert not any(ev.enabled for ev in trace.events("pl011_*"))


class FakeSnapshots:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def save(self, tag: str) -> None:
        self.calls.append(("save", tag))

    def load(self, tag: str) -> None:
        if tag == "missing":
            raise MonitorError(f"Snapshot '{tag}' does not exist in one or more devices")
        self.calls.append(("load", tag))

    def delete(self, tag: str) -> None:
        self.calls.append(("delete", tag))

    def list(self) -> list[dict[str, Any]]:
        return [{"id": 1, "tag": "boot", "vm-state-size": 3 << 20, "date-sec": 0,
                 "vm-clock-nsec": 3_723_004_000_000, "icount": 12}]


async def test_snapshot_commands_use_the_hook() -> None:
    async with running(IMAGES / "hello.elf") as (monitor, _):
        with pytest.raises(MonitorError, match="Snapshots are not available"):
            await hmp(monitor, "savevm x")
    store = FakeSnapshots()
    async with running(IMAGES / "hello.elf") as (monitor, _):
        monitor.daemon.snapshots = store  # every monitor on this daemon sees it
        await hmp(monitor, "savevm boot")
        await hmp(monitor, "loadvm boot")
        await hmp(monitor, "delvm boot")
        await hmp(monitor, "savevm")
        assert store.calls[:3] == [("save", "boot"), ("load", "boot"), ("delete", "boot")]
        assert store.calls[3][1].startswith("vm-")
        text = await monitor.human_monitor_command("loadvm missing")
        assert text == "Error: Snapshot 'missing' does not exist in one or more devices\n"
        table = (await hmp(monitor, "info snapshots")).splitlines()
        assert table[0] == "List of snapshots present on all disks:"
        assert table[1] == ("ID      TAG               VM_SIZE                DATE        "
                            "VM_CLOCK     ICOUNT")
        assert table[2].startswith("1       boot                3 MiB 19")
        assert table[2].endswith(" 0001:02:03.004         12")


async def test_synchronous_door_refuses_waiting_commands() -> None:
    async with running(IMAGES / "hello.elf") as (monitor, _):
        with pytest.raises(MonitorError, match="not available here"):
            monitor.execute_hmp_now("run-for 1ms")
        assert monitor.execute_hmp_now("info status") == "VM status: paused (prelaunch)\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("xpinfo/$()+-*'\" 0123456789abcdefghwq|%~&^\\")),
               max_size=30))
def test_garbage_lines_only_ever_give_errors(line: str) -> None:
    monitor = _fuzz_monitor()
    try:
        text = monitor.execute_hmp_now(line)
    except MonitorError as e:
        assert e.desc
    else:
        assert isinstance(text, str)


_FUZZ: list[Monitor] = []


def _fuzz_monitor() -> Monitor:
    if not _FUZZ:
        _FUZZ.append(Monitor(Daemon(boot(IMAGES / "hello.elf"), start_paused=True)))
    return _FUZZ[0]


def test_registry_entries_are_complete() -> None:
    monitor = _fuzz_monitor()
    for cmd in monitor.registry.hmp_commands():
        assert cmd.help, cmd.name
    for name in ("help", "info", "x", "xp", "print", "write", "stop", "cont", "step",
                 "run-for", "system_reset", "quit", "trace-event", "ringbuf_read",
                 "ringbuf_write", "savevm", "loadvm", "delvm"):
        assert name in monitor.registry.hmp
    for name in ("status", "registers", "mtree", "qtree", "irq", "pic", "clock", "hpet",
                 "pl011", "chardev", "trace-events", "snapshots"):
        assert name in monitor.registry.info



def test_registers_verbose_decodes_by_the_privileged_spec() -> None:
    machine = boot(IMAGES / "hello.elf")
    monitor = Monitor(Daemon(machine, start_paused=True))
    hart = machine.hart
    hart.mstatus, hart.mtvec, hart.mcause, hart.mie = 0x1888, 0x80000101, 0x8000000B, 0x880
    text = monitor.execute_hmp_now("info registers -v").splitlines()
    assert " mstatus  MIE=1 MPIE=1 MPP=3 MPRV=0 TW=0" in text
    assert " mie      MTIE MEIE" in text
    assert " mtvec    base=0x80000100 mode=vectored" in text
    assert " mcause   interrupt 11: machine external interrupt" in text
    hart.mcause = 2
    assert " mcause   exception 2: illegal instruction" in monitor.execute_hmp_now(
        "info registers -v").splitlines()
    assert "mcause   exception" not in monitor.execute_hmp_now("info registers")


async def test_every_completed_register_name_is_readable() -> None:
    monitor = _fuzz_monitor()
    names = (await monitor.execute_qmp("x-emud-query-completions", {}))["registers"]
    assert {"pc", "a0", "x31", "mstatus", "mcause", "minstret"} <= set(names)
    for name in names:
        assert monitor.execute_hmp_now(f"p/x ${name}").startswith(("0x", "0"))


async def test_every_completed_symbol_evaluates_to_its_address() -> None:
    monitor = _fuzz_monitor()
    image = monitor.machine.image
    assert image is not None
    symbols = (await monitor.execute_qmp("x-emud-query-completions", {}))["symbols"]
    assert {"main", "_start"} <= set(symbols)
    for name in symbols:
        value = image.symbols[name]
        assert monitor.execute_hmp_now(f"p/x {name}") == (f"{value:#x}" if value else "0") + "\n"


@pytest.mark.parametrize("size, text", [(0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"),
                                        (892 << 20, "892 MiB"), (1 << 50, "1 PiB"),
                                        ((1 << 64) - 1, "16 EiB")])
def test_snapshot_sizes_print_as_qemu_does_up_to_a_u64(size: int, text: str) -> None:
    from emud.monitor.commands import _human_size

    assert _human_size(size) == text
