"""SiFive test finisher ("syscon"): the guest powers off or resets the machine."""

from __future__ import annotations

from emud.device import Device, DeviceContext

# Register map: one 32-bit register at offset 0.
FINISHER_FAIL = 0x3333  # (code << 16) | 0x3333: power off, exit status `code`
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


class Syscon(Device):
    name = "syscon"
    description = "SiFive test finisher: the guest powers off or resets the machine"
    mmio_size = 0x1000

    def do_realize(self, ctx: DeviceContext) -> None:
        self.on_poweroff = ctx.poweroff
        self.on_reset = ctx.request_reset

    def write(self, offset: int, value: int, size: int) -> None:
        if offset != 0 or size != 4:
            return
        status = value & 0xFFFF
        if status == FINISHER_PASS:
            self.on_poweroff(0)
        elif status == FINISHER_FAIL:
            self.on_poweroff(value >> 16)
        elif status == FINISHER_RESET:
            self.on_reset()
        # anything else is ignored, as on QEMU's sifive_test
