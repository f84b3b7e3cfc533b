"""The example GPIO plug-in (examples/gpio): its register logic, and that a device written
outside emud gets the machine's services for free (snapshots, gdb, monitor, tracing, the
PLIC, bus errors) through one `-device` flag."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from conftest import ROOT
from emud.device import DeviceContext, DeviceError

EXAMPLE = ROOT / "examples" / "gpio"
GPIO_PY = EXAMPLE / "gpio.py"
GUEST = EXAMPLE / "guest.elf"
BASE, IRQ_LINE = 0x10012000, 8
DEVICE_FLAG = f"{GPIO_PY}:Gpio,id=gpio0,addr={BASE:#x},irq={IRQ_LINE}"
DATA_IN, DATA_OUT, DIR, IE, IS, TRIGGER, POLARITY, PINS = range(0, 0x20, 4)


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
