"""An example GPIO block, written outside emud as a user's device would be.

Registers (32-bit, one bit per pin; see docs/writing-a-device.md):

    0x00 DATA_IN   read-only: the pad levels (outputs read back what they drive)
    0x04 DATA_OUT  the levels output pins drive
    0x08 DIR       1 = output, 0 = input
    0x0C IE        interrupt enable
    0x10 IS        interrupt status; writing 1 clears a bit (W1C)
    0x14 TRIGGER   1 = edge, 0 = level
    0x18 POLARITY  1 = rising edge / high level, 0 = falling edge / low level
    0x1C PINS      read-only: the number of pins

An input pin reads what drives it from outside (`set_input`, or the input
lines in `inputs`); an undriven input reads its `pull-up` bit.  Status bits
latch on the selected edge, or follow the selected level (a level bit cannot
be cleared while the level holds), for every pin: IE only gates the IRQ.
Reset: every pin an input, edge-triggered on rising edges, nothing enabled.
The one IRQ output is high while IS & IE is non-zero.  Other offsets read as 0
and ignore writes.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from emud import trace
from emud.device import Device, DeviceContext, DeviceError, prop_uint
from emud.irq import IRQ
from emud.vmstate import UINT32, Field, VMStateDescription

MMIO_SIZE = 0x1000
MAX_PINS = 32


class Reg(IntEnum):
    DATA_IN = 0x00
    DATA_OUT = 0x04
    DIR = 0x08
    IE = 0x0C
    IS = 0x10
    TRIGGER = 0x14
    POLARITY = 0x18
    PINS = 0x1C


trace_read = trace.event("gpio_read", "offset 0x%02x value 0x%08x reg %s")
trace_write = trace.event("gpio_write", "offset 0x%02x value 0x%08x reg %s")
trace_pads = trace.event("gpio_pads", "pads 0x%08x -> 0x%08x")
trace_irq = trace.event("gpio_irq", "irq level %d")


# --- register logic: pure functions of the register values ---------------------------


def pin_mask(pins: int) -> int:
    return (1 << pins) - 1


def pad_levels(direction: int, data_out: int, external: int, mask: int) -> int:
    """What each pad carries: the output level where driven, the outside level elsewhere."""
    return (direction & data_out | ~direction & external) & mask


def edge_hits(old: int, new: int, trigger: int, polarity: int) -> int:
    """Edge-triggered pins whose pad made the selected transition."""
    rising, falling = ~old & new, old & ~new
    return trigger & (polarity & rising | ~polarity & falling)


def level_hits(pads: int, trigger: int, polarity: int, mask: int) -> int:
    """Level-triggered pins whose pad is at the selected level."""
    return ~trigger & ~(pads ^ polarity) & mask


def _reg_name(offset: int) -> str:
    try:
        return Reg(offset).name
    except ValueError:
        return "UNKN"


class Gpio(Device):
    """A GPIO block of 1 to 32 pins with one interrupt output."""

    name = "gpio"
    description = "example GPIO block (examples/gpio): 1-32 pins, one IRQ"
    mmio_size = MMIO_SIZE
    trace_events = (trace_read, trace_write, trace_pads, trace_irq)

    pins = prop_uint(8, 8, minimum=1, maximum=MAX_PINS, doc="number of pins (1..32)")
    reset_value = prop_uint(32, 0, doc="DATA_OUT after reset")
    pull_up = prop_uint(32, 0, doc="level of undriven input pins (one bit per pin)")

    def __init__(self, **props: Any) -> None:
        self.irq = IRQ("gpio.irq")
        self.pin_inputs: list[IRQ] = []
        self.direction = self.data_out = self.external = 0
        self.ie = self.status = self.trigger = self.polarity = 0
        self.pads = 0
        self.mask = 0
        super().__init__(**props)

    def do_realize(self, ctx: DeviceContext) -> None:
        self.mask = pin_mask(self.pins)
        for prop, value in (("reset-value", self.reset_value), ("pull-up", self.pull_up)):
            if value & ~self.mask:
                raise DeviceError(f"{self.id}: property '{prop}' sets bits above pin "
                                  f"{self.pins - 1}: {value:#x}")
        self.pin_inputs = [IRQ(f"{self.id}.{n}", self._input_handler(n))
                           for n in range(self.pins)]

    def reset(self) -> None:
        # Every pin starts on rising edges: a level mode at reset would latch status
        # for every pin at that level before the guest chose anything.
        self.direction = self.ie = self.status = 0
        self.trigger = self.polarity = self.mask
        self.data_out = self.reset_value
        self.external = self.pull_up
        self.pads = pad_levels(self.direction, self.data_out, self.external, self.mask)
        self._update(self.pads)

    # --- pins -------------------------------------------------------------------------

    def output_lines(self) -> dict[str, IRQ]:
        return {"irq": self.irq}

    def input_lines(self) -> dict[str, IRQ]:
        """One input line per pin, named by its number: what drives an input pin."""
        return {str(n): line for n, line in enumerate(self.pin_inputs)}

    def _input_handler(self, pin: int) -> Callable[[bool], None]:
        return lambda level: self.set_input(pin, level)

    def set_input(self, pin: int, level: bool) -> None:
        """Drive input pin `pin` from outside (another device, a test)."""
        bit = 1 << pin
        self.external = self.external | bit if level else self.external & ~bit
        self._update(self.pads)

    def _update(self, old_pads: int) -> None:
        """Recompute the pads from the registers, latch status, drive the IRQ."""
        self.pads = pad_levels(self.direction, self.data_out, self.external, self.mask)
        if self.pads != old_pads:
            trace_pads(old_pads, self.pads)
        self.status |= (edge_hits(old_pads, self.pads, self.trigger, self.polarity)
                        | level_hits(self.pads, self.trigger, self.polarity, self.mask))
        level = bool(self.status & self.ie)
        if level != self.irq.level:
            trace_irq(int(level))
        self.irq.set(level)

    # --- MMIO -------------------------------------------------------------------------

    def peek(self, offset: int, size: int) -> int:
        values: dict[int, int] = {
            Reg.DATA_IN: self.pads,
            Reg.DATA_OUT: self.data_out,
            Reg.DIR: self.direction,
            Reg.IE: self.ie,
            Reg.IS: self.status,
            Reg.TRIGGER: self.trigger,
            Reg.POLARITY: self.polarity,
            Reg.PINS: self.pins,
        }
        return values.get(offset & ~3, 0)

    def read(self, offset: int, size: int) -> int:
        value = self.peek(offset, size)
        trace_read(offset, value, _reg_name(offset & ~3))
        return value

    def write(self, offset: int, value: int, size: int) -> None:
        value &= self.mask  # bits above the last pin do not exist
        trace_write(offset, value, _reg_name(offset & ~3))
        match offset & ~3:
            case Reg.DATA_OUT:
                self.data_out = value
            case Reg.DIR:
                self.direction = value
            case Reg.IE:
                self.ie = value
            case Reg.IS:
                self.status &= ~value
            case Reg.TRIGGER:
                self.trigger = value
            case Reg.POLARITY:
                self.polarity = value
            case _:
                return  # DATA_IN, PINS and holes ignore writes
        self._update(self.pads)

    # --- monitor ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,  # render_info is a classmethod: the data names the instance
            "pins": self.pins,
            "irq": self.irq.level,
            "registers": {"data_in": self.pads, "data_out": self.data_out,
                          "dir": self.direction, "ie": self.ie, "is": self.status,
                          "trigger": self.trigger, "polarity": self.polarity},
            "pin": [self._pin_info(n) for n in range(self.pins)],
        }

    def _pin_info(self, n: int) -> dict[str, Any]:
        bit = 1 << n
        edge, high = bool(self.trigger & bit), bool(self.polarity & bit)
        return {
            "pin": n,
            "dir": "out" if self.direction & bit else "in",
            "level": int(bool(self.pads & bit)),
            "trigger": ("rising" if high else "falling") if edge else ("high" if high else "low"),
            "enabled": bool(self.ie & bit),
            "pending": bool(self.status & bit),
        }

    def _loaded(self) -> None:
        # The pads and the IRQ line are derived: rebuild them from the loaded registers
        # without latching edges (the snapshot's status already holds what happened).
        self.pads = pad_levels(self.direction, self.data_out, self.external, self.mask)
        self.irq.set(bool(self.status & self.ie))

    @classmethod
    def render_info(cls, data: dict[str, Any]) -> str:
        """`info <id>` for a human: the registers, then one line per pin."""
        regs = data["registers"]
        # The monitor adds the board's facts (base, plic-source) to info()'s data.
        place = "" if data.get("base") is None else f" at {data['base']:#010x}"
        if data.get("plic-source") is not None:
            place += f", PLIC source {data['plic-source']}"
        lines = [f"{data['id']}: {data['pins']} pins{place}, "
                 f"irq {'high' if data['irq'] else 'low'}",
                 "  " + " ".join(f"{name}={value:#010x}" for name, value in regs.items()),
                 "  pin dir level trigger  ie  pending"]
        for pin in data["pin"]:
            lines.append(f"  {pin['pin']:3} {pin['dir']:3} {pin['level']:5} {pin['trigger']:8} "
                         f"{'on' if pin['enabled'] else 'off':3} "
                         f"{'yes' if pin['pending'] else 'no'}")
        return "\n".join(lines)


Gpio.vmstate = VMStateDescription(
    "gpio", 1, 1,
    [Field(name, UINT32) for name in ("direction", "data_out", "external", "ie", "status",
                                      "trigger", "polarity")],
    loaded=Gpio._loaded,
)
