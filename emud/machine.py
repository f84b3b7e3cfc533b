"""The emud-virt board: memory map, interrupt wiring, image loading, reset, run slices."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from enum import Enum
from typing import Any

from emud.chardev import CharBackend
from emud.clock import VirtualClock
from emud.cpu.csr import MEI, MSI, MTI
from emud.cpu.hart import Hart
from emud.cpu.translate import Translator
from emud.device import Device, DeviceError
from emud.hw.clint import Clint
from emud.hw.hpet import HPET
from emud.hw.pl011 import PL011
from emud.hw.plic import Plic
from emud.hw.syscon import Syscon
from emud.irq import IRQ
from emud.loader import ElfImage, ImageError
from emud.memory import AddressSpace, BusError, Ram, Region

# Memory map (docs/architecture.md)
SYSCON_BASE, SYSCON_SIZE = 0x0010_0000, 0x1000
CLINT_BASE, CLINT_SIZE = 0x0200_0000, 0x10000
PLIC_BASE, PLIC_SIZE = 0x0C00_0000, 0x400000
UART0_BASE, UART0_SIZE = 0x1000_0000, 0x1000
HPET_BASE, HPET_SIZE = 0xFED0_0000, 0x400
RAM_BASE = 0x8000_0000
ACCELERATORS = ("interp", "translate")  # README.md "Accelerators"
DEFAULT_ACCEL = "translate"
DEFAULT_RAM_SIZE = 16 << 20

UART0_IRQ = 10
HPET_IRQ_BASE = 32  # HPET output line n -> PLIC source 32 + n

SLICE = 20_000  # instructions between visits to the event loop


class RunState(Enum):
    RUNNING = "running"  # more work to do
    IDLE = "idle"  # WFI with no timer armed: only outside input can wake the hart
    POWEROFF = "poweroff"  # the guest ended the run (see exit_code)
    DEBUG = "debug"  # a breakpoint or watchpoint stopped the hart (see hart.debug_stop)


class Machine:
    def __init__(self, serial: CharBackend, ram_size: int = DEFAULT_RAM_SIZE,
                 icount_shift: int = 0,
                 device_props: Mapping[str, Mapping[str, Any]] | None = None,
                 accel: str = DEFAULT_ACCEL) -> None:
        """`device_props` sets device properties by device name, QEMU's -global style:
        {"hpet": {"timers": 8, "msi": True}}.  Bad values raise DeviceError."""
        props = device_props or {}
        if accel not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {accel!r} (use {' or '.join(ACCELERATORS)})")
        unknown = set(props) - {"hpet", "pl011"}
        if unknown:
            raise DeviceError(f"no device {sorted(unknown)[0]!r} takes properties here")
        self.clock = VirtualClock(icount_shift)
        self.ram = Ram(RAM_BASE, ram_size)
        self.bus = AddressSpace(self.ram)
        self.hart = Hart(self.bus, self.clock)
        hart = self.hart
        if accel == "translate":
            hart.accel = Translator(hart)
        self.plic = Plic(IRQ("mip.MEIP", lambda level: hart.set_irq(MEI, level)))
        self.clint = Clint(
            self.clock,
            IRQ("mip.MSIP", lambda level: hart.set_irq(MSI, level)),
            IRQ("mip.MTIP", lambda level: hart.set_irq(MTI, level)),
        )
        hart.time_source = lambda: self.clint.mtime
        self.syscon = Syscon(self.poweroff, self.request_reset)
        self.serial = serial
        self.uart0 = PL011(self.plic.inputs[UART0_IRQ], serial.write,
                           accept_input=serial.accept_input, **props.get("pl011", {}))
        serial.attach(self.uart0)
        self.hpet = HPET(self.clock, self._fsb_write, **props.get("hpet", {}))
        for line, irq in enumerate(self.hpet.irqs):
            irq.sink = self.plic.inputs[HPET_IRQ_BASE + line].set
        self.devices: list[Device] = [self.syscon, self.clint, self.hpet, self.plic, self.uart0]
        for name, base, size, device in (
            ("syscon", SYSCON_BASE, SYSCON_SIZE, self.syscon),
            ("clint", CLINT_BASE, CLINT_SIZE, self.clint),
            ("plic", PLIC_BASE, PLIC_SIZE, self.plic),
            ("pl011", UART0_BASE, UART0_SIZE, self.uart0),
            ("hpet", HPET_BASE, HPET_SIZE, self.hpet),
        ):
            self.bus.add(Region(name, base, size, device))
        self.image: ElfImage | None = None
        self.exit_code: int | None = None
        self._reset_requested = False

    # --- image and reset ----------------------------------------------------------

    def load(self, image: ElfImage) -> None:
        for seg in image.segments:
            if not self.ram.contains(seg.addr, max(seg.memsz, 1)):
                raise ImageError(
                    f"{image.path}: segment at {seg.addr:#010x} (+{seg.memsz:#x}) is outside "
                    f"RAM {self.ram.base:#010x}..{self.ram.base + self.ram.size - 1:#010x}"
                )
        self.image = image
        tohost = image.symbols.get("tohost")
        if tohost is not None and self.ram.contains(tohost, 8):
            self.bus.watch_stores(tohost, 4, self._htif_store)
        self.reset()

    def reset(self) -> None:
        """System reset: devices, RAM contents from the image, hart at the entry point."""
        for device in self.devices:
            device.reset()
        entry = 0
        if self.image is not None:
            self.ram.data[:] = bytes(self.ram.size)
            for seg in self.image.segments:
                self.bus.write_bytes(seg.addr, seg.data)
            entry = self.image.entry
        self.hart.reset(entry)
        self.exit_code = None
        self.hart.stop_requested = False

    def _fsb_write(self, addr: int, value: int) -> None:
        """An HPET FSB (MSI) message: a 32-bit store on the system bus."""
        with contextlib.suppress(BusError):  # QEMU drops a DMA store that hits nothing
            self.bus.write(addr, value, 4)

    def poweroff(self, code: int) -> None:
        self.exit_code = code
        self.hart.stop_requested = True

    def request_reset(self) -> None:
        self._reset_requested = True
        self.hart.stop_requested = True

    def _htif_store(self, addr: int, value: int, size: int) -> None:
        """riscv-tests convention: tohost = 1 passes, (n << 1) | 1 fails with n."""
        word = self.bus.read(addr & ~3, 4)
        if word & 1:
            self.poweroff(word >> 1)

    # --- running ------------------------------------------------------------------

    def run_slice(self, limit: int = SLICE) -> RunState:
        """Run at most `limit` instructions, never past the next timer deadline."""
        if self.exit_code is not None:
            return RunState.POWEROFF
        hart = self.hart
        if hart.waiting and (state := self._wait()) is not None:
            return state
        hart.run(self.clock.insns_until_deadline(limit))
        if hart.debug_stop is not None:
            return RunState.DEBUG
        if self._reset_requested:
            self._reset_requested = False
            self.reset()
            return RunState.RUNNING
        if self.exit_code is not None:
            return RunState.POWEROFF
        if hart.waiting:
            return self._wait() or RunState.RUNNING
        return RunState.RUNNING

    def _wait(self) -> RunState | None:
        """The hart is in WFI: jump the clock to the next deadline unless it can wake now.

        None when the hart may run again, IDLE when only outside input can wake it.
        """
        hart = self.hart
        if not hart.mip & hart.mie:
            if not self.clock.jump_to_next_deadline():
                return RunState.IDLE
            if not hart.mip & hart.mie:
                return RunState.RUNNING  # a timer ran but nothing woke the hart yet
        hart.waiting = False
        return None

    def run_until_poweroff(self, max_insns: int | None = None) -> int | None:
        """Run synchronously (tests, benchmarks). Returns the exit code, or None on idle/limit."""
        end = None if max_insns is None else self.clock.icount + max_insns
        while True:
            limit = SLICE if end is None else min(SLICE, end - self.clock.icount)
            if limit <= 0:
                return None
            state = self.run_slice(limit)
            if state is RunState.POWEROFF:
                return self.exit_code
            if state is RunState.IDLE:  # held input waits for the guest, which sleeps
                return None
