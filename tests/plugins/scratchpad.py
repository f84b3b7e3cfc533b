"""Test plug-ins: a device written outside emud/ with the public API only."""

from __future__ import annotations

from typing import Any

from emud import trace
from emud.device import Device, DeviceContext, DeviceError, prop_uint
from emud.irq import IRQ
from emud.vmstate import UINT32, Field, VMStateDescription

trace_scratch_write = trace.event("scratch_write", "offset 0x%x value 0x%x")


class Scratchpad(Device):
    """Four 32-bit registers; a write of `fault` to register 3 raises (a plug-in bug)."""

    name = "scratchpad"
    description = "four scratch registers (test plug-in)"
    mmio_size = 0x10
    trace_events = (trace_scratch_write,)
    fault = prop_uint(32, 0xDEAD, doc="the value whose store raises")

    def __init__(self, **props: Any) -> None:
        super().__init__(**props)
        self.regs = [0] * 4
        self.irq = IRQ("scratchpad.irq")

    def output_lines(self) -> dict[str, IRQ]:
        return {"irq": self.irq}

    def reset(self) -> None:
        self.regs = [0] * 4

    def peek(self, offset: int, size: int) -> int:
        return self.regs[offset >> 2 & 3]

    def write(self, offset: int, value: int, size: int) -> None:
        trace_scratch_write(offset, value)
        if offset == 12 and value == self.fault:
            raise RuntimeError("scratchpad bug")
        self.regs[offset >> 2 & 3] = value
        self.irq.set(bool(self.regs[0]))

    def info(self) -> dict[str, Any]:
        return {"regs": list(self.regs)}

    vmstate = VMStateDescription("scratchpad", 1, 1, [Field("regs", UINT32, num=4)])


class Broken(Device):
    name = "broken"

    def do_realize(self, ctx: DeviceContext) -> None:
        raise ZeroDivisionError("realize exploded")


class Picky(Device):
    name = "picky"

    def do_realize(self, ctx: DeviceContext) -> None:
        raise DeviceError(f"{self.id}: needs a friend")


class Pulse(Device):
    """No MMIO window, one output: a board wires it, nothing maps it."""

    name = "pulse"

    def __init__(self, **props: Any) -> None:
        super().__init__(**props)
        self.irq = IRQ("pulse.irq")

    def output_lines(self) -> dict[str, IRQ]:
        return {"irq": self.irq}


class BadLines(Device):
    name = "badlines"

    def output_lines(self) -> dict[str, IRQ]:
        raise KeyError("no lines today")


class BadReset(Device):
    """Realizes fine; every later reset raises (a bug that shows only at run time)."""

    name = "badreset"

    def reset(self) -> None:
        if getattr(self, "was_reset", False):
            raise RuntimeError("reset bug")
        self.was_reset = True
