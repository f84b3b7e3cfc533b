"""The emud-virt board: memory map, interrupt wiring, image loading, reset, run slices."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emud import log, trace
from emud.board import Board, BoardError, Slot, default_board, find_type
from emud.chardev import CharBackend
from emud.clock import VirtualClock
from emud.cpu.csr import MEI, MSI, MTI
from emud.cpu.hart import Hart
from emud.cpu.translate import Translator
from emud.device import Device, DeviceContext, DeviceError
from emud.irq import IRQ
from emud.loader import ElfImage, ImageError, load_elf
from emud.memory import AddressSpace, BusError, Ram, Region

if TYPE_CHECKING:
    from emud.cpu.codecache import CodeCache
    from emud.semihosting import Semihosting, SemihostingConfig

# The built-in board's map is emud/boards/emud-virt.toml; images/emud.h repeats it for
# guests.  These name what tests and guests rely on.
SYSCON_BASE = 0x0010_0000
CLINT_BASE = 0x0200_0000
PLIC_BASE = 0x0C00_0000
UART0_BASE = 0x1000_0000
HPET_BASE = 0xFED0_0000
RAM_BASE = 0x8000_0000
UART0_IRQ = 10
HPET_IRQ_BASE = 32  # HPET output line n -> PLIC source 32 + n
ACCELERATORS = ("interp", "translate")  # README.md "Accelerators"
DEFAULT_ACCEL = "translate"
DEFAULT_RAM_SIZE = 16 << 20

SLICE = 20_000  # instructions between visits to the event loop


class RunState(Enum):
    RUNNING = "running"  # more work to do
    IDLE = "idle"  # WFI with no timer armed: only outside input can wake the hart
    POWEROFF = "poweroff"  # the guest ended the run (see exit_code)
    DEBUG = "debug"  # a breakpoint or watchpoint stopped the hart (see hart.debug_stop)


class CpuLines:
    """The hart's interrupt inputs as a board node (`cpu.mei`, `cpu.msi`, `cpu.mti`)."""

    id = "cpu"

    def __init__(self, hart: Hart) -> None:
        def line(name: str, bit: int) -> IRQ:
            return IRQ(f"cpu.{name}", lambda level: hart.set_irq(bit, level))

        self.lines = {name: line(name, bit) for name, bit in (("mei", MEI), ("msi", MSI),
                                                              ("mti", MTI))}

    def output_lines(self) -> dict[str, IRQ]:
        return {}

    def input_lines(self) -> dict[str, IRQ]:
        return self.lines


VALID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")  # QEMU's rule for ids
trace_device_error = trace.event("device_error", "device %s: %s")


class Machine:
    def __init__(self, serial: CharBackend | Sequence[CharBackend] = (),
                 ram_size: int = DEFAULT_RAM_SIZE, icount_shift: int = 0,
                 device_props: Mapping[str, Mapping[str, Any]] | None = None,
                 accel: str = DEFAULT_ACCEL, board: Board | None = None,
                 devices: Sequence[Slot] = (),
                 semihosting: SemihostingConfig | None = None,
                 semihosting_console: CharBackend | None = None,
                 translation_cache: CodeCache | None = None) -> None:
        """Build `board` (the built-in emud-virt by default) plus the -device `devices`.

        `serial` is one backend or the -serial list, bound in order to the devices
        that take one (serial0, serial1...; a device left over gets a null backend).
        `device_props` sets properties by device type, QEMU's -global style:
        {"hpet": {"timers": 8, "msi": True}}.  Anything that cannot be built raises
        DeviceError (BoardError), one line naming the device.  `semihosting` enables
        the guest's semihosting calls, with `semihosting_console` as their console.
        `translation_cache` keeps the translate accelerator's compiled regions between
        runs (emud.cpu.codecache; None: none, as for tests that build machines).
        """
        if accel not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {accel!r} (use {' or '.join(ACCELERATORS)})")
        self.board = (board or default_board()).with_devices(list(devices))
        self.clock = VirtualClock(icount_shift)
        self.ram = Ram(self.board.ram_base, ram_size)
        self.bus = AddressSpace(self.ram)
        self.bus.on_device_error = self._device_error
        self.hart = Hart(self.bus, self.clock)
        if accel == "translate":
            self.hart.accel = Translator(self.hart, translation_cache)
        backends = [serial] if isinstance(serial, CharBackend) else list(serial)
        self.serials: list[CharBackend] = []
        self.devices: list[Device] = []
        self.device_errors: dict[str, str] = {}  # id -> the first run-time error it raised
        globals_ = {name: dict(props) for name, props in (device_props or {}).items()}
        for slot in self.board.slots:
            self._add(slot, globals_, backends)
        unused = set(globals_) - {d.name for d in self.devices}
        if unused:
            raise DeviceError(f"no device {sorted(unused)[0]!r} takes properties here")
        self._wire()
        self.serial = self.serials[0] if self.serials else CharBackend()
        self.image: ElfImage | None = None
        self.exit_code: int | None = None
        self._reset_requested = False
        self.semihosting: Semihosting | None = None
        if semihosting is not None:
            from emud.semihosting import Semihosting  # only a guest that asks for it

            self.semihosting = Semihosting(semihosting, semihosting_console or CharBackend(),
                                           self.poweroff)
            self.hart.semihosting = self.semihosting

    # --- building from the board -----------------------------------------------------

    def _add(self, slot: Slot, globals_: dict[str, dict[str, Any]],
             backends: list[CharBackend]) -> None:
        if not VALID_ID.fullmatch(slot.id):
            raise BoardError(f"-device/board id {slot.id!r} is not valid (a letter, then "
                             "letters, digits, '-', '_' or '.')")
        if any(d.id == slot.id for d in self.devices) or slot.id == "cpu":
            raise BoardError(f"{slot.id}: a device with this id already exists")
        cls = find_type(slot.type)
        device = cls()
        device.id = slot.id
        serial = None
        if cls.wants_serial:
            n = len(self.serials)
            serial = backends[n] if n < len(backends) else CharBackend()
            self.serials.append(serial)
        ctx = DeviceContext(clock=self.clock, dma_write=self._dma_write, serial=serial,
                            poweroff=self.poweroff, request_reset=self.request_reset,
                            set_time_source=self._set_time_source,
                            guest_error=lambda text: log.guest_error(f"{device.id}: {text}"),
                            unimp=lambda text: log.unimplemented(f"{device.id}: {text}"))
        try:
            for key, value in (globals_.get(cls.name, {}) | slot.props).items():
                device.set_property(key, value)
            device.realize(ctx)
        except DeviceError as e:
            text = str(e)
            raise BoardError(text if text.startswith(f"{slot.id}:") else f"{slot.id}: {text}"
                             ) from None
        except Exception as e:  # a plug-in's bug: one line naming it, not a traceback
            raise BoardError(f"{slot.id}: realize failed: {type(e).__name__}: {e}") from None
        if cls.mmio_size:
            if slot.base is None:
                raise BoardError(f"{slot.id}: needs an address (addr=... / base = ...)")
            region = Region(cls.name, slot.base, cls.mmio_size, device)
            for other in self.bus.regions:
                if other.base < region.end and region.base < other.end:
                    what = other.device.id if isinstance(other.device, Device) else other.name
                    raise BoardError(f"{slot.id}: MMIO {region.base:#x}..{region.end - 1:#x} "
                                     f"overlaps {what} {other.base:#x}..{other.end - 1:#x}")
            self.bus.add(region)
        elif slot.base is not None:
            raise BoardError(f"{slot.id}: {cls.name} has no MMIO window (remove addr/base)")
        self.devices.append(device)

    def _node(self, ident: str) -> Device | CpuLines:
        if ident == "cpu":
            return self._cpu
        for device in self.devices:
            if device.id == ident:
                return device
        raise BoardError(f"no device '{ident}' on the board")

    @staticmethod
    def _lines(node: Device | CpuLines, kind: str) -> dict[str, IRQ]:
        """A node's output or input lines; a plug-in's bug there is one BoardError line."""
        try:
            return node.output_lines() if kind == "output" else node.input_lines()
        except Exception as e:
            raise BoardError(f"{node.id}: {kind}_lines() failed: {type(e).__name__}: {e}"
                             ) from None

    def _wire(self) -> None:
        self._cpu = CpuLines(self.hart)
        driven: dict[int, str] = {}  # id(input IRQ) -> who drives it
        used: set[int] = set()

        def connect(src: str, output: IRQ, dst: str, name: str) -> None:
            inputs = self._lines(self._node(dst), "input")
            line = inputs.get(name)
            if line is None:
                known = ", ".join(inputs) or "none"
                raise BoardError(f"{src}: {dst} has no input '{name}' (inputs: {known})")
            if id(line) in driven:
                raise BoardError(f"{src}: input {dst}.{name} is already driven by "
                                 f"{driven[id(line)]}")
            if id(output) in used:
                raise BoardError(f"{src}: output {output.name} is connected twice")
            driven[id(line)] = src
            used.add(id(output))
            output.sink = line.set

        for wire in self.board.wires:
            outputs = self._lines(self._node(wire.src), "output")
            output = outputs.get(wire.output)
            if output is None:
                known = ", ".join(outputs) or "none"
                raise BoardError(f"{wire.src}: no output '{wire.output}' (outputs: {known})")
            connect(f"{wire.src}.{wire.output}", output, wire.dst, wire.input)
        for slot, device in zip(self.board.slots, self.devices, strict=True):
            if slot.irq is None:
                continue
            controller = self.board.interrupt_controller
            wired = list(self._lines(device, "output").items())[:device.irq_outputs]
            if not wired:
                raise BoardError(f"{slot.id}: has no interrupt output for irq={slot.irq}")
            for n, (name, output) in enumerate(wired):
                connect(f"{slot.id}.{name}", output, controller, str(slot.irq + n))

    @property
    def input_ports(self) -> list[CharBackend]:
        """Every backend whose input the guest reads: the serial ports in order, then the
        semihosting console (record/replay logs and checkpoints them by this index)."""
        console = [self.semihosting.console] if self.semihosting is not None else []
        return [*self.serials, *console]

    def close(self) -> None:
        """Close the serial backends (sockets, files) and the semihosting files."""
        for backend in self.serials:
            backend.close()
        if self.semihosting is not None:
            self.semihosting.close()  # the host files it opened
            self.semihosting.console.close()

    def device(self, ident: str) -> Device:
        """The board's device with this id."""
        node = self._node(ident)
        assert isinstance(node, Device)
        return node

    def devices_of_serial(self) -> list[Device]:
        """The devices bound to serial0, serial1... in order."""
        return [d for d in self.devices if d.wants_serial]

    def devices_of(self, cls: type[Device]) -> list[Device]:
        return [d for d in self.devices if isinstance(d, cls)]

    def _set_time_source(self, source: Callable[[], int]) -> None:
        self.hart.time_source = source

    def _device_error(self, device: object, text: str) -> None:
        """A device raised inside an MMIO handler (or reported a guest error): the
        access already became a bus error; say so once per device on stderr."""
        ident = getattr(device, "id", "?")
        trace_device_error(ident, text)
        if ident not in self.device_errors:
            self.device_errors[ident] = text
            sys.stderr.write(f"emud: device {ident}: {text} (later errors: trace "
                             "event device_error)\n")

    # --- image and reset ----------------------------------------------------------

    def load(self, image: ElfImage) -> None:
        for seg in image.segments:
            if not self.ram.contains(seg.addr, max(seg.memsz, 1)):
                raise ImageError(
                    f"{image.path}: segment at {seg.addr:#010x} (+{seg.memsz:#x}) is outside "
                    f"RAM {self.ram.base:#010x}..{self.ram.base + self.ram.size - 1:#010x}"
                )
        self.image = image
        if self.semihosting is not None:
            self.semihosting.heap_base = max((seg.addr + seg.memsz for seg in image.segments),
                                             default=self.ram.base)
            if self.semihosting.config.cmdline is None:
                self.semihosting.cmdline = str(image.path)
        tohost = image.symbols.get("tohost")
        if tohost is not None and self.ram.contains(tohost, 8):
            self.bus.watch_stores(tohost, 4, self._htif_store)
        self.reset()

    def reset(self) -> None:
        """System reset: devices, RAM contents from the image, hart at the entry point."""
        for device in self.devices:
            try:
                device.reset()
            except Exception as e:  # a plug-in's bug must not end the run: report it
                self._device_error(device, f"reset raised {type(e).__name__}: {e}")
        entry = 0
        if self.image is not None:
            self.ram.clear()
            for seg in self.image.segments:
                self.bus.write_bytes(seg.addr, seg.data)
            entry = self.image.entry
        self.hart.reset(entry)
        self.exit_code = None
        self.hart.stop_requested = False

    def _dma_write(self, addr: int, value: int, size: int) -> None:
        """A device's bus-master store (the HPET's FSB messages) on the system bus."""
        with contextlib.suppress(BusError):  # QEMU drops a DMA store that hits nothing
            self.bus.write(addr, value, size)

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

    def wait_step(self) -> RunState | None:
        """One WFI step on its own (record/replay reproduces idle time jumps one by one)."""
        return self._wait() if self.hart.waiting else None

    def _wait(self) -> RunState | None:
        """The hart is in WFI: jump the clock to the next deadline unless it can wake now.

        None when the hart may run again, IDLE when only outside input can wake it.
        """
        hart = self.hart
        if self.semihosting is not None and self.semihosting.input_ready(hart):
            hart.waiting = False  # a semihosting console read has its input now
            return None
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


def code_cache(spec: bool | str | Path | CodeCache, accel: str) -> CodeCache | None:
    """A `translation_cache` option (True: the user's cache, False, "off", a directory or
    a CodeCache) as the cache to give the machine (None: none)."""
    if accel != "translate" or spec is False:
        return None
    from emud.cpu import codecache  # only the translator uses it

    if isinstance(spec, codecache.CodeCache):
        cache = spec
    else:
        cache = codecache.default_cache() if spec is True else codecache.from_spec(spec)
    return cache if cache.enabled else None


def build(image: str | Path | ElfImage | None, serial: Sequence[CharBackend], *,
          translation_cache: bool | str | Path | CodeCache = False,
          accel: str = DEFAULT_ACCEL, **options: Any) -> Machine:
    """A Machine (`options` are its keywords) with `image` loaded: what emud.api.Machine
    builds, and what a plain `emud run` builds without the API (tests/test_startup.py).
    Raises ImageError, DeviceError, ValueError or OSError."""
    machine = Machine(serial, accel=accel, translation_cache=code_cache(translation_cache, accel),
                      **options)
    if image is not None:
        machine.load(image if isinstance(image, ElfImage) else load_elf(image))
    return machine
