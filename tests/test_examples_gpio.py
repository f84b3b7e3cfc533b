"""The example GPIO plug-in (examples/gpio): its register logic, and that a device written
outside emud gets the machine's services for free (snapshots, gdb, monitor, tracing, the
PLIC, bus errors) through one `-device` flag."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from qemu.qmp import EventListener, QMPClient
from test_qmp_cli import qmp_daemon

from conftest import ROOT
from emud.device import DeviceContext, DeviceError

EXAMPLE = ROOT / "examples" / "gpio"
GPIO_PY = EXAMPLE / "gpio.py"
GUEST = EXAMPLE / "guest.elf"
BASE, IRQ_LINE = 0x10012000, 8
DEVICE_FLAG = f"{GPIO_PY}:Gpio,id=gpio0,addr={BASE:#x},irq={IRQ_LINE}"
DATA_IN, DATA_OUT, DIR, IE, IS, TRIGGER, POLARITY, PINS = range(0, 0x20, 4)
TIMEOUT = 60  # a failure guard only (the machine is shared and loaded)


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("examples_gpio", GPIO_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpio = _load_example()


def make(**props: Any) -> Any:
    device = gpio.Gpio(**props)
    device.realize(DeviceContext())
    return device


# --- the register logic, device alone ----------------------------------------------


def test_pure_functions() -> None:
    assert gpio.pad_levels(0b0011, 0b0101, 0b1010, 0xF) == 0b1001
    assert gpio.edge_hits(0b01, 0b10, trigger=0b11, polarity=0b11) == 0b10  # pin 1 rose
    assert gpio.edge_hits(0b01, 0b10, trigger=0b11, polarity=0b00) == 0b01  # pin 0 fell
    assert gpio.edge_hits(0b01, 0b10, trigger=0b00, polarity=0b11) == 0  # level pins
    assert gpio.level_hits(0b0110, trigger=0b0001, polarity=0b0100, mask=0xF) == 0b1100


def test_outputs_loop_back_and_inputs_read_the_outside() -> None:
    dev = make(pins=4, pull_up=0b1000)
    assert dev.read(PINS, 4) == 4
    assert dev.read(DATA_IN, 4) == 0b1000  # undriven inputs read their pull-up
    dev.write(DIR, 0b0011, 4)
    dev.write(DATA_OUT, 0xFF, 4)  # bits above the last pin do not exist
    assert dev.read(DATA_OUT, 4) == 0xF
    assert dev.read(DATA_IN, 4) == 0b1011
    dev.input_lines()["2"].set(True)
    assert dev.read(DATA_IN, 4) == 0b1111


def test_edge_status_latches_and_clears_by_writing_one() -> None:
    dev = make()
    dev.write(DIR, 0xFF, 4)
    dev.write(IE, 0b10, 4)
    assert not dev.irq.level
    dev.write(DATA_OUT, 0b10, 4)  # rising edge on pin 1 (reset: every pin rising-edge)
    assert dev.read(IS, 4) == 0b10 and dev.irq.level
    dev.write(DATA_OUT, 0, 4)  # the falling edge is not selected: still latched
    assert dev.read(IS, 4) == 0b10
    dev.write(IS, 0b01, 4)  # W1C of another bit changes nothing
    assert dev.read(IS, 4) == 0b10 and dev.irq.level
    dev.write(IS, 0b10, 4)
    assert dev.read(IS, 4) == 0 and not dev.irq.level


def test_level_status_holds_while_the_level_does() -> None:
    dev = make()
    dev.write(TRIGGER, 0xFE, 4)  # pin 0 level, high (reset polarity); the others edges
    dev.write(IE, 0b1, 4)
    dev.input_lines()["0"].set(True)
    assert dev.irq.level
    dev.write(IS, 0xFF, 4)
    assert dev.read(IS, 4) == 0b1 and dev.irq.level  # cannot clear while high
    dev.input_lines()["0"].set(False)
    dev.write(IS, 0b1, 4)
    assert dev.read(IS, 4) & 1 == 0 and not dev.irq.level


def test_peek_has_no_side_effects_and_holes_read_zero() -> None:
    dev = make(reset_value=0x81)
    dev.write(0x800, 0xFFFF, 4)
    assert dev.read(0x800, 4) == 0 and dev.peek(DATA_OUT, 4) == 0x81
    dev.write(DATA_IN, 0xFF, 4)  # read-only
    assert dev.peek(DATA_IN, 4) == 0  # DATA_OUT drives nothing: every pin is an input


@pytest.mark.parametrize(("props", "message"), [
    ({"pins": 0}, "property 'pins' must be in 1..32, got 0"),
    ({"pins": 33}, "property 'pins' must be in 1..32, got 33"),
    ({"pins": 4, "reset_value": 0x10}, "property 'reset-value' sets bits above pin 3: 0x10"),
    ({"pins": 8, "pull_up": 0x100}, "property 'pull-up' sets bits above pin 7: 0x100"),
])
def test_bad_properties_are_one_clear_error(props: dict[str, int], message: str) -> None:
    with pytest.raises(DeviceError, match=f"^gpio: {message}$"):
        make(**props)


def test_vmstate_round_trip_rebuilds_the_line() -> None:
    dev = make()
    dev.write(DIR, 0xA5, 4)
    dev.write(DATA_OUT, 0x81, 4)
    dev.write(IE, 0x01, 4)
    assert dev.irq.level
    payload = gpio.Gpio.vmstate.save(dev)
    other = make()
    gpio.Gpio.vmstate.decode(other, payload, gpio.Gpio.vmstate.version_id).apply()
    assert other.info() == dev.info() and other.irq.level


# --- the real machine: one -device flag, everything else for free ----------------------

GUEST_LINES = [
    "gpio: 8 pins, out 00000000 in 00000000",
    "gpio: rising edge pin 1 status 00000002",
    "gpio: falling edge pin 2 status 00000004",
    "gpio: high level pin 3 status 00000008",
    "gpio: probe 00000000",
    "gpio: all ok",
]
FAULTY = '''
from gpio import Gpio


class FaultyGpio(Gpio):
    """The example with a bug: reading the probe offset raises."""

    def read(self, offset: int, size: int) -> int:
        if offset == 0xFFC:
            raise RuntimeError("probe register not wired")
        return super().read(offset, size)
'''


def emud_run(*args: str, env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emud", "run", str(GUEST), "-serial", "stdio",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, env=env)


def test_the_guest_drives_it_through_the_plic_with_one_device_flag() -> None:
    result = emud_run("-device", DEVICE_FLAG, "--trace", "gpio_*")
    assert result.stdout.splitlines() == GUEST_LINES, result.stderr
    assert result.returncode == 0
    trace = result.stderr.splitlines()
    assert "gpio_write offset 0x08 value 0x0000000f reg DIR" in trace
    assert "gpio_pads pads 0x00000000 -> 0x00000005" in trace
    assert trace.count("gpio_irq irq level 1") == 3  # one per trigger mode


def test_a_board_file_line_adds_it_the_same_way(tmp_path: Path) -> None:
    # Run elsewhere: the board's relative plug-in path is taken from the board's directory.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = emud_run("--board", str(EXAMPLE / "board.toml"), env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout.splitlines()) == (0, GUEST_LINES), result.stderr


def test_a_raising_handler_is_a_bus_error_for_the_guest(tmp_path: Path) -> None:
    (tmp_path / "faulty_gpio.py").write_text(FAULTY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(EXAMPLE), str(tmp_path)))}
    result = emud_run("-device", f"faulty_gpio:FaultyGpio,id=gpio0,addr={BASE:#x},"
                      f"irq={IRQ_LINE}", env=env)
    lines = result.stdout.splitlines()
    assert lines == [*GUEST_LINES[:4], "gpio: probe bus error", "gpio: all ok"], result.stderr
    assert result.returncode == 0  # the guest went on after its fault, and so did emud
    assert result.stderr.splitlines() == [  # reported once, in one line
        f"emud: device gpio0: read at {BASE + 0xFFC:#x} (4 bytes) raised RuntimeError: probe "
        "register not wired (later errors: trace event device_error)"]


@contextlib.asynccontextmanager
async def daemon(tmp_path: Path, *extra: str, banners: int = 1, device: str = DEVICE_FLAG,
                 env: dict[str, str] | None = None
                 ) -> AsyncIterator[tuple[QMPClient, dict[str, str]]]:
    """`emud run guest.elf -S` with the GPIO and QMP on loopback; yields QMP and the
    addresses emud printed (`QMP`, `gdb`)."""
    async with qmp_daemon(str(GUEST), "-S", "--icount", "shift=0", "--qmp", "tcp:127.0.0.1:0",
                          "-serial", "ringbuf", "--snapshots", str(tmp_path / "s.sqlite"),
                          "-device", device, *extra, banners=banners, env=env,
                          timeout=TIMEOUT) as (process, qmp):
        yield qmp, process.banner


async def hmp(qmp: QMPClient, line: str) -> str:
    result = await qmp.execute("human-monitor-command", {"command-line": line})
    assert isinstance(result, str)
    return result


async def run_to_poweroff(qmp: QMPClient) -> None:
    with qmp.listen(listener := EventListener()):
        await qmp.execute("cont")
        while (await asyncio.wait_for(listener.get(), TIMEOUT))["event"] != "SHUTDOWN":
            pass


async def test_snapshots_diff_and_the_monitor_see_it(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (qmp, _):
        await run_to_poweroff(qmp)
        assert (await hmp(qmp, "ringbuf_read serial0 4096")).splitlines() == GUEST_LINES
        shown = await hmp(qmp, "info gpio0")  # its own renderer, from its info()
        lines = shown.splitlines()
        assert lines[0] == "gpio0: 8 pins at 0x10012000, PLIC source 8, irq low"
        assert lines[1].startswith("  data_in=0x00000081 data_out=0x00000081 dir=0x000000a5 "
                                   "ie=0x00000000 is=")
        assert lines[1].endswith(" trigger=0x0000000a polarity=0x00000005")
        assert lines[3].startswith("    0 out     1 high     off ")
        assert len(lines) == 3 + 8
        data = await qmp.execute("x-emud-query-gpio", {"id": "gpio0"})
        assert isinstance(data, dict) and data["registers"]["dir"] == 0xA5
        assert gpio.Gpio.render_info(data).splitlines() == lines
        assert " 8: 3  gpio0.irq" in (await hmp(qmp, "info irq")).splitlines()  # three at the PLIC
        completions = await qmp.execute("x-emud-query-completions")
        assert isinstance(completions, dict) and "gpio0" in completions["devices"]
        assert {"gpio_read", "gpio_write", "gpio_pads", "gpio_irq"} <= set(completions["events"])
        assert "gpio_irq" in await hmp(qmp, "info trace-events gpio_*")
        qtree = (await hmp(qmp, "info qtree")).splitlines()
        at = qtree.index('  dev: gpio, id "gpio0"')
        assert qtree[at + 1:at + 5] == ["    pins = 8 (0x8)", "    reset-value = 0 (0x0)",
                                        "    pull-up = 0 (0x0)",
                                        "    mmio 0000000010012000/0000000000001000"]
        assert ("    0000000010012000-0000000010012fff (prio 0, i/o): gpio (gpio0)"
                in (await hmp(qmp, "info mtree")).splitlines())

        await hmp(qmp, "savevm done")
        await hmp(qmp, f"write {BASE + DATA_OUT:#x} 0x3c 4")
        await hmp(qmp, f"write {BASE + DIR:#x} 0xff 4")
        diff = [line.split() for line in (await hmp(qmp, "snapshot diff done")).splitlines()]
        assert diff[1:] == [["gpio", "data_out:", "0x81", "->", "0x3c"],
                            ["gpio", "direction:", "0xa5", "->", "0xff"]]
        assert "data_in=0x0000003c" in await hmp(qmp, "info gpio0")
        await hmp(qmp, "loadvm done")
        assert await hmp(qmp, "info gpio0") == shown
        assert (await hmp(qmp, "snapshot diff done")).splitlines()[1:] == [" (no differences)"]


def test_device_help_lists_its_properties() -> None:
    result = emud_run("-device", f"{GPIO_PY}:Gpio,help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "pins=<uint8> - number of pins (1..32) (default: 8)" in out
    assert "pull-up=<uint32>" in out and "reset-value=<uint32>" in out
    assert "  trace events: gpio_read gpio_write gpio_pads gpio_irq" in out.splitlines()


def test_a_bad_property_is_one_line_naming_the_device() -> None:
    result = emud_run("-device", f"{DEVICE_FLAG},pins=40")
    assert result.returncode == 1
    assert result.stderr == "emud: gpio0: property 'pins' must be in 1..32, got 40\n"


def test_an_installed_package_adds_the_type_by_its_entry_point(tmp_path: Path) -> None:
    # What `pip install` of a package declaring [project.entry-points."emud.devices"]
    # leaves on the path: a dist-info directory whose entry_points.txt names the class.
    dist = tmp_path / "emud_gpio_example-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: emud-gpio-example\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text("[emud.devices]\nexample-gpio = gpio:Gpio\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(EXAMPLE), str(tmp_path)))}
    listing = emud_run("-device", "help", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "example-gpio" in listing.stdout
    result = emud_run("-device", f"example-gpio,id=gpio0,addr={BASE:#x},irq={IRQ_LINE}",
                      env=env)
    assert (result.returncode, result.stdout.splitlines()) == (0, GUEST_LINES), result.stderr


async def test_the_daemon_outlives_a_raising_handler(tmp_path: Path) -> None:
    (tmp_path / "faulty_gpio.py").write_text(FAULTY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(EXAMPLE), str(tmp_path)))}
    flag = f"faulty_gpio:FaultyGpio,id=gpio0,addr={BASE:#x},irq={IRQ_LINE}"
    async with daemon(tmp_path, device=flag, env=env) as (qmp, _):
        await run_to_poweroff(qmp)
        assert "gpio: probe bus error" in await hmp(qmp, "ringbuf_read serial0 4096")
        qtree = await hmp(qmp, "info qtree")
        assert "RuntimeError: probe register not wired" in qtree
        assert (await hmp(qmp, f"xp /wx {BASE + PINS:#x}")).split() == [  # it goes on working
            f"{BASE + PINS:016x}:", "0x00000008"]
