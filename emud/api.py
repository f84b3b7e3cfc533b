"""emud's public Python API: build a machine from an ELF, run it, look inside, serve it.

Everything here is re-exported by `emud` (``emud.Machine``, ``emud.EmudError``...).
The CLI's `emud run` is built on this class: it makes a `Machine` and calls `serve`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emud import machine as _machine
from emud.board import Board, BoardError, Slot, default_board, load_board, parse_device
from emud.chardev import CharBackend, RingBackend, open_backend
from emud.cpu.debug import AWATCH, BREAK, RWATCH, WATCH, Watchpoint
from emud.cpu.disasm import ABI_NAMES
from emud.device import DeviceError
from emud.loader import ImageError
from emud.machine import RunState

# Snapshots, the event loop and semihosting are imported where they are used: a plain
# `emud run` builds its machine here and needs none of them (tests/test_startup.py).
if TYPE_CHECKING:
    import asyncio

    from emud.cpu.codecache import CodeCache
    from emud.daemon import Daemon
    from emud.listen import Address
    from emud.semihosting import SemihostingConfig
    from emud.snapshots import SnapshotData

__all__ = ["EmudError", "ConfigError", "SnapshotError", "TimeoutError", "Machine", "Stop",
           "Snapshot", "Change", "Uart", "Registers", "Csrs", "Server"]

TAIL = 4096  # bytes of recent output a Uart keeps for `tail`
DEFAULT_MAX_INSTRUCTIONS = 1_000_000_000  # the bound of a run given no limit (README: API)
_SIZE = re.compile(r"(\d+)([KMG]?)", re.IGNORECASE)


# --- errors -------------------------------------------------------------------------------


class EmudError(Exception):
    """Base of every error the API raises; the message is one line for a person."""


class ConfigError(EmudError):
    """The machine cannot be built: image, RAM size, board, device or serial."""


class SnapshotError(EmudError):
    """A snapshot cannot be saved or loaded (the machine is left as it was)."""


class TimeoutError(EmudError):  # noqa: A001 - emud.TimeoutError, raised by expect()
    """`Uart.expect` did not see its pattern within the virtual time it was given."""


# --- small value types ------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """Why a `Machine.run` ended.

    `reason` is one of "limit" (the instructions or ns given ran out), "until" (the pc,
    symbol or UART text was reached), "breakpoint", "watchpoint", "poweroff" (see
    `exit_code`) or "idle" (WFI with no timer armed: only outside input could wake it).
    """

    reason: str
    pc: int
    icount: int
    symbol: str | None = None
    exit_code: int | None = None
    match: re.Match[bytes] | None = None  # the UART match of until=text/regex
    address: int | None = None  # the watched byte a watchpoint stop accessed

    def __str__(self) -> str:
        where = f"{self.pc:#010x}" + (f" <{self.symbol}>" if self.symbol else "")
        extra = f" exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"{self.reason}{extra} at {where} after {self.icount} instructions"


@dataclass(frozen=True)
class Snapshot:
    """A machine state captured in memory by `Machine.save()`."""

    data: SnapshotData

    @property
    def icount(self) -> int | None:
        return self.data.icount

    @property
    def vm_clock_ns(self) -> int:
        return self.data.vm_clock_ns


@dataclass(frozen=True)
class Change:
    """One difference found by `Machine.diff` (as `snapshot diff` prints it)."""

    section: str
    field: str
    old: Any
    new: Any


def parse_ram(size: int | str) -> int:
    """RAM size from bytes or QEMU's -m text ("16M", "64K", "1G"; no suffix means MiB)."""
    if isinstance(size, int):
        return size
    match = _SIZE.fullmatch(size.strip())
    if not match:
        raise ConfigError(f"invalid RAM size {size!r} (e.g. 16M, 1G)")
    return int(match.group(1)) << {"": 20, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]


def _pattern(pattern: str | bytes | re.Pattern[bytes] | re.Pattern[str]) -> re.Pattern[bytes]:
    """Text to wait for on a UART as a bytes regex (plain text is matched literally)."""
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, str):
            return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
        return pattern
    raw = pattern.encode() if isinstance(pattern, str) else pattern
    return re.compile(re.escape(raw))


# --- registers ------------------------------------------------------------------------------


class ByName:
    """Items as attributes: ``regs.a0`` is ``regs["a0"]``.  Subclasses give
    __getitem__ (KeyError for an unknown name) and keep their own state in names
    starting with "_"."""

    def __getitem__(self, name: str) -> int:
        raise NotImplementedError

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):  # not an item (e.g. state looked up before it is set)
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None


class WritableByName(ByName):
    """ByName whose attributes are assigned too: ``regs.a0 = 5`` is ``regs["a0"] = 5``."""

    def __setitem__(self, name: str, value: int) -> None:
        raise NotImplementedError

    def __setattr__(self, name: str, value: int) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value


class Registers(WritableByName):
    """The hart's integer registers by ABI name (`a0`, `sp`), `xN`, `fp` or `pc`:
    ``m.regs.a0``, ``m.regs["sp"] = 0x80001000``."""

    _m: Machine

    def __init__(self, machine: Machine) -> None:
        self._m = machine

    @staticmethod
    def index(name: str) -> int | None:
        """The x register number of `name`; None for pc."""
        lname = name.lower()
        if lname == "pc":
            return None
        if lname == "fp":
            return 8
        if lname in ABI_NAMES:
            return ABI_NAMES.index(lname)
        if re.fullmatch(r"x([0-9]|[12][0-9]|3[01])", lname):
            return int(lname[1:])
        raise KeyError(f"unknown register {name!r} (ABI names like a0 or sp, x0..x31, pc)")

    def __getitem__(self, name: str) -> int:
        hart = self._m._core.hart
        n = self.index(name)
        return hart.pc if n is None else hart.x[n]

    def __setitem__(self, name: str, value: int) -> None:
        hart = self._m._core.hart
        n = self.index(name)
        if n is None:
            hart.pc = value & 0xFFFF_FFFF
        elif n:
            hart.x[n] = value & 0xFFFF_FFFF


    def as_dict(self) -> dict[str, int]:
        """Every register by ABI name, and pc."""
        return {name: self[name] for name in ABI_NAMES} | {"pc": self["pc"]}


class Csrs(WritableByName):
    """CSRs by name, as the guest's csrr would read them: ``m.csr.mstatus``,
    ``m.csr["mcause"]``; writing goes through the CSR's write rules (WARL bits)."""

    _m: Machine

    def __init__(self, machine: Machine) -> None:
        self._m = machine

    @staticmethod
    def number(name: str) -> int:
        from emud.monitor.core import CSR_BY_NAME

        num = CSR_BY_NAME.get(name.lower())
        if num is None:
            raise KeyError(f"unknown CSR {name!r}")
        return int(num)

    def __getitem__(self, name: str) -> int:
        return self._m._core.hart.csr_read(self.number(name), 0)

    def __setitem__(self, name: str, value: int) -> None:
        self._m._core.hart.csr_write(self.number(name), value & 0xFFFF_FFFF, 0)


# --- UART --------------------------------------------------------------------------------


class CaptureBackend(RingBackend):
    """The API's default serial: keeps everything the guest wrote for `Uart.read`, and
    ends the current run slice on output so `expect` stops right after the text."""

    name = "ringbuf"

    def __init__(self) -> None:
        super().__init__()
        self.on_output: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.on_output is not None:
            self.on_output()


class Uart:
    """One serial port of the machine (``m.uart`` is serial0, ``m.uarts[n]`` serialN),
    or the semihosting console (``m.console``, index -1)."""

    def __init__(self, machine: Machine, index: int,
                 backend: CharBackend | None = None) -> None:
        self._m = machine
        self.index = index
        self._backend = backend
        self.output = bytearray()  # what the guest wrote and `read` has not returned yet
        self._recent = bytearray()  # the last TAIL bytes written, read or not (reports)

    @property
    def backend(self) -> CharBackend:
        return self._backend or self._m._core.serials[self.index]

    def _collect(self) -> None:
        backend = self.backend
        if isinstance(backend, RingBackend):
            data = backend.read()
            self.output += data
            self._recent = (self._recent + data)[-TAIL:]

    def tail(self) -> bytes:
        """The last bytes the guest wrote (up to 4 KiB), whether `read` returned them or not."""
        self._collect()
        return bytes(self._recent)

    def read(self) -> bytes:
        """What the guest wrote since the last read (only for the default ringbuf serial)."""
        self._collect()
        data = bytes(self.output)
        self.output.clear()
        return data

    def write(self, data: bytes | str) -> None:
        """Input for the guest, through the serial input path (held until the UART
        takes it, so when it arrives depends only on the guest)."""
        self.backend.feed(data.encode() if isinstance(data, str) else data)

    def expect(self, pattern: str | bytes | re.Pattern[bytes] | re.Pattern[str], *,
               timeout_ns: int = 1_000_000_000) -> re.Match[bytes]:
        """Run the machine until the guest's output (since the last read) matches;
        returns the match, and consumes the output up to its end.  Raises
        emud.TimeoutError when `timeout_ns` of virtual time pass, the guest powers off
        or goes idle first."""
        regex = _pattern(pattern)
        stop = self._m.run(ns=timeout_ns, until=regex, uart=self.index)
        if stop.match is None:
            tail = bytes(self.output[-80:]).decode(errors="replace")
            name = "console" if self.index < 0 else f"serial{self.index}"
            raise TimeoutError(f"{name}: no {regex.pattern!r} "
                               f"({stop}); output tail {tail!r}")
        return stop.match

    def _search(self, regex: re.Pattern[bytes]) -> re.Match[bytes] | None:
        self._collect()
        match = regex.search(bytes(self.output))  # a copy: the match outlives the buffer
        if match is not None:
            del self.output[:match.end()]
        return match


# --- the machine -------------------------------------------------------------------------


class Machine:
    """An emud-virt machine running `image` (an ELF path, or None for an empty one).

    Options are keywords, the CLI's in Python form: `ram` (bytes or "16M"), `icount`
    (virtual ns per instruction is 2**icount), `accel` ("translate" or "interp"),
    `board` (a board TOML path or a Board), `devices` (-device specs), `globals`
    ({"hpet": {"timers": 8}}), `serial` ("ringbuf", the default, kept for `uart`; or
    -serial specs, one per UART, or CharBackend objects), `snapshots` (the SQLite
    store `save("tag")` uses; default: the one savevm uses for this image),
    `semihosting` (True, or a SemihostingConfig to allow file calls in a directory:
    serve the guest's semihosting calls) with `semihosting_console` ("ringbuf", the
    default, kept for `console`; a -serial spec or a CharBackend).
    Anything that cannot be built raises ConfigError.
    """

    def __init__(self, image: str | Path | None = None, *, ram: int | str = "16M",
                 icount: int = 0, accel: str = _machine.DEFAULT_ACCEL,
                 board: str | Path | Board | None = None, devices: Sequence[str | Slot] = (),
                 globals: Mapping[str, Mapping[str, Any]] | None = None,  # noqa: A002
                 serial: str | CharBackend | Sequence[str | CharBackend] = "ringbuf",
                 snapshots: str | Path | None = None,
                 semihosting: bool | SemihostingConfig = False,
                 semihosting_console: str | CharBackend = "ringbuf",
                 translation_cache: bool | str | Path | CodeCache = True) -> None:
        specs = [serial] if isinstance(serial, str | CharBackend) else list(serial)
        backends: list[CharBackend] = []
        console: CharBackend | None = None

        def backend(spec: str | CharBackend) -> CharBackend:
            return spec if isinstance(spec, CharBackend) else \
                CaptureBackend() if spec == "ringbuf" else open_backend(spec)

        config = None if isinstance(semihosting, bool) else semihosting
        if semihosting is True:
            from emud.semihosting import SemihostingConfig

            config = SemihostingConfig()
        try:
            for spec in specs:
                backends.append(backend(spec))
            if config is not None:
                console = backend(semihosting_console)
            if not isinstance(board, Board):
                board = load_board(board) if board is not None else default_board()
            slots = [s for s in (d if isinstance(d, Slot) else parse_device(d)
                                 for d in devices) if s is not None]
            core = _machine.build(image, backends, ram_size=parse_ram(ram), icount_shift=icount,
                                  accel=accel, device_props=globals, board=board,
                                  devices=slots, semihosting=config,
                                  semihosting_console=console,
                                  translation_cache=translation_cache)
        except (ImageError, DeviceError, BoardError, ValueError, OSError) as e:
            for opened in [*backends, *([console] if console else [])]:
                opened.close()
            raise ConfigError(str(e)) from None
        self._core = core
        self._snapshots_path = snapshots
        self._daemon: Daemon | None = None
        self.regs = Registers(self)
        self.csr = Csrs(self)
        self.uarts = [Uart(self, n) for n in range(len(core.serials))]
        self._console = Uart(self, -1, console) if console is not None else None
        self._text_hit = False
        for serial in [*core.serials, *([console] if console else [])]:
            if isinstance(serial, CaptureBackend):
                serial.on_output = self._output

    def _output(self) -> None:
        if self._text_hit:  # only while a run waits for UART text
            self._core.hart.stop_requested = True

    # --- plain state ---------------------------------------------------------------

    @property
    def core(self) -> _machine.Machine:
        """The internal machine (emud.machine.Machine) this API object drives."""
        return self._core

    @property
    def uart(self) -> Uart:
        """serial0."""
        if not self.uarts:
            raise EmudError("this board has no serial port")
        return self.uarts[0]

    @property
    def console(self) -> Uart:
        """The semihosting console (with ``semihosting=``): read, write, expect."""
        if self._console is None:
            raise EmudError("semihosting is off (Machine(..., semihosting=True))")
        return self._console

    @property
    def pc(self) -> int:
        return self._core.hart.pc

    @pc.setter
    def pc(self, value: int) -> None:
        self._core.hart.pc = value & 0xFFFF_FFFF

    @property
    def icount(self) -> int:
        """Instructions retired since the machine was built."""
        return self._core.clock.icount

    @property
    def now_ns(self) -> int:
        """Virtual time in ns."""
        return self._core.clock.now_ns

    @property
    def exit_code(self) -> int | None:
        """The guest's exit code once it powered off, else None."""
        return self._core.exit_code

    @property
    def symbols(self) -> Mapping[str, int]:
        """The ELF's symbols by name (``m.symbols["main"]``)."""
        image = self._core.image
        return image.symbols if image else {}

    def symbol_at(self, addr: int) -> str | None:
        """"name" or "name+0xoff" for the nearest symbol at or below addr."""
        image = self._core.image
        return image.symbolize(addr) if image else None

    def address(self, where: int | str) -> int:
        """An address from a number or a symbol name."""
        if isinstance(where, int):
            return where
        try:
            return self.symbols[where]
        except KeyError:
            raise EmudError(f"unknown symbol {where!r}") from None

    def read(self, addr: int | str, size: int) -> bytes:
        """`size` bytes of guest memory (RAM or MMIO, as the bus reads them)."""
        from emud.memory import BusError

        try:
            return self._core.bus.read_bytes(self.address(addr), size)
        except BusError as e:
            raise EmudError(f"cannot read memory at {e.addr:#x}") from None

    def write(self, addr: int | str, data: bytes) -> None:
        from emud.memory import BusError

        try:
            self._core.bus.write_bytes(self.address(addr), data)
        except BusError as e:
            raise EmudError(f"cannot write memory at {e.addr:#x}") from None

    # The sized accessors are one bus access of that width, as the guest's lw/sw: MMIO
    # registers that take only word accesses work through them (read/write are bytes).

    def _access(self, addr: int | str, size: int, value: int | None = None) -> int:
        from emud.memory import BusError

        where = self.address(addr)
        try:
            if value is None:
                return self._core.bus.read(where, size)
            self._core.bus.write(where, value & ((1 << 8 * size) - 1), size)
            return value
        except BusError as e:
            raise EmudError(f"cannot {'read' if value is None else 'write'} memory at "
                            f"{e.addr:#x}") from None

    def read_u8(self, addr: int | str) -> int:
        return self._access(addr, 1)

    def read_u16(self, addr: int | str) -> int:
        return self._access(addr, 2)

    def read_u32(self, addr: int | str) -> int:
        return self._access(addr, 4)

    def write_u8(self, addr: int | str, value: int) -> None:
        self._access(addr, 1, value)

    def write_u16(self, addr: int | str, value: int) -> None:
        self._access(addr, 2, value)

    def write_u32(self, addr: int | str, value: int) -> None:
        self._access(addr, 4, value)

    def reset(self) -> None:
        """System reset: devices, RAM from the image, the hart at the entry point."""
        self._core.reset()

    def last_trap(self) -> dict[str, int]:
        """mcause, mepc and mtval: what the last trap left there."""
        return {name: self.csr[name] for name in ("mcause", "mepc", "mtval")}

    # --- debugging -----------------------------------------------------------------

    def break_at(self, where: int | str) -> int:
        """A breakpoint at an address or symbol; a run then stops there ("breakpoint")."""
        addr = self.address(where)
        self._core.hart.set_breakpoint(addr, True)
        return addr

    def remove_break(self, where: int | str) -> None:
        self._core.hart.set_breakpoint(self.address(where), False)

    def watch(self, where: int | str, length: int = 4, *, kind: str = "write") -> Watchpoint:
        """A watchpoint on `length` bytes: kind "write", "read" or "access"; a run stops
        ("watchpoint") before the access takes effect."""
        kinds = {"write": WATCH, "read": RWATCH, "access": AWATCH}
        if kind not in kinds or length <= 0:
            raise EmudError(f"invalid watchpoint {kind!r} of {length} bytes "
                            "(kind write, read or access)")
        w = Watchpoint(self.address(where), length, kinds[kind])
        self._core.hart.add_watchpoint(w)
        return w

    def unwatch(self, w: Watchpoint) -> None:
        self._core.hart.remove_watchpoint(w)

    # --- running -------------------------------------------------------------------

    def run(self, *, instructions: int | None = None, ns: int | None = None,
            until: int | str | bytes | re.Pattern[bytes] | re.Pattern[str] | None = None,
            max_instructions: int | None = None, uart: int = 0) -> Stop:
        """Run until a limit, a target, or the guest stops by itself.

        `instructions` and `ns` (virtual time) are limits; `until` is a target: an
        address, a symbol name (str), or text on a UART (bytes, or a compiled regex;
        the output since the last `Uart.read` is searched and consumed up to the match).
        A run always ends: also on power-off, idle, a breakpoint or watchpoint, and
        after `max_instructions` (default 10**9) when nothing else is given.
        """
        core, clock, hart = self._core, self._core.clock, self._core.hart
        if max_instructions is None and instructions is None and ns is None:
            max_instructions = DEFAULT_MAX_INSTRUCTIONS
        limits = [n for n in (instructions, max_instructions) if n is not None]
        end = clock.icount + min(limits) if limits else None
        target_pc: int | None = None
        regex: re.Pattern[bytes] | None = None
        if isinstance(until, int) or (isinstance(until, str) and until in self.symbols):
            target_pc = self.address(until)
        elif until is not None:
            if isinstance(until, str) and not isinstance(until, re.Pattern):
                raise EmudError(f"unknown symbol {until!r} (use bytes for UART text)")
            regex = _pattern(until)
            port = self.console if uart < 0 else self.uarts[uart]
        timer = None
        expired = False
        if ns is not None:
            def expire() -> None:
                nonlocal expired
                expired = True
                hart.stop_requested = True

            timer = clock.timer(expire)
            timer.modify(clock.now_ns + ns)
        added_break = target_pc is not None and target_pc not in hart.breakpoints
        if added_break:
            assert target_pc is not None
            hart.set_breakpoint(target_pc, True)
        self._text_hit = regex is not None
        try:
            while True:
                if regex is not None and (match := port._search(regex)) is not None:
                    return self._stop("until", match=match)
                if expired:
                    return self._stop("limit")
                budget = _machine.SLICE if end is None else min(_machine.SLICE,
                                                                end - clock.icount)
                if budget <= 0:
                    return self._stop("limit")
                state = core.run_slice(budget)
                if core.exit_code is None:  # our stop requests (output, ns) end here
                    hart.stop_requested = False
                if state is RunState.POWEROFF:
                    if regex is not None and (match := port._search(regex)) is not None:
                        return self._stop("until", match=match)
                    return self._stop("poweroff")
                if state is RunState.IDLE:
                    if regex is not None and (match := port._search(regex)) is not None:
                        return self._stop("until", match=match)
                    return self._stop("idle")
                if state is RunState.DEBUG:
                    stop = hart.debug_stop
                    assert stop is not None
                    if stop.kind == BREAK:
                        return self._stop("until" if added_break and stop.addr == target_pc
                                          else "breakpoint")
                    return self._stop("watchpoint", address=stop.addr)
        finally:
            self._text_hit = False
            if timer is not None:
                timer.cancel()
            if added_break:
                assert target_pc is not None
                hart.set_breakpoint(target_pc, False)

    def _stop(self, reason: str, **extra: Any) -> Stop:
        pc = self.pc
        return Stop(reason, pc, self.icount, self.symbol_at(pc),
                    self.exit_code if reason == "poweroff" else None, **extra)

    # --- snapshots -----------------------------------------------------------------

    def _service(self) -> Any:
        if self._daemon is None:
            from emud.daemon import Daemon
            from emud.monitor import SnapshotService

            self._daemon = Daemon(self._core, exit_on_poweroff=False)
            self._daemon.snapshots = SnapshotService(self._daemon, self._snapshots_path)
        return self._daemon.snapshots

    def save(self, tag: str | None = None) -> Snapshot:
        """The state now, in memory; with `tag` also saved to the snapshot store (the one
        savevm uses, so `emud run` + `loadvm TAG` can load it)."""
        if tag is not None:
            from emud.monitor.errors import MonitorError

            try:
                self._service().save(tag)
            except MonitorError as e:
                raise SnapshotError(str(e)) from None
        from emud.migration import capture

        return Snapshot(capture(self._core))

    def load(self, snap: Snapshot | str) -> None:
        """Go back to `snap`, or to the store's snapshot `snap` (a tag).  All or nothing:
        a snapshot of another image or board raises SnapshotError and changes nothing."""
        from emud.migration import MigrationError, restore
        from emud.snapshots import StoreError

        try:
            data = snap.data if isinstance(snap, Snapshot) else self._service().store.load(snap)
            restore(self._core, data)
        except (MigrationError, StoreError) as e:
            name = "" if isinstance(snap, Snapshot) else f" '{snap}'"
            raise SnapshotError(f"cannot load snapshot{name}: {e}") from None
        except EmudError:
            raise
        except Exception as e:  # the store could not be opened (MonitorError)
            if type(e).__name__ != "MonitorError":
                raise
            raise SnapshotError(str(e)) from None
        for port in self.uarts:  # output belongs to the timeline that was left
            port.output.clear()

    def snapshots(self) -> list[str]:
        """The tags in the snapshot store."""
        tags: list[str] = self._service().tags()
        return tags

    def diff(self, a: Snapshot | str, b: Snapshot | str | None = None) -> list[Change]:
        """What changed from `a` to `b` (default: the state now), field by field."""
        from emud.migration import MigrationError, capture
        from emud.migration import diff as _diff
        from emud.snapshots import StoreError

        def data(s: Snapshot | str | None) -> SnapshotData:
            if s is None:
                return capture(self._core)
            if isinstance(s, Snapshot):
                return s.data
            try:
                loaded: SnapshotData = self._service().store.load(s)
            except StoreError as e:
                raise SnapshotError(str(e)) from None
            return loaded

        try:
            changes = _diff(self._core, data(a), data(b))
        except MigrationError as e:
            raise SnapshotError(str(e)) from None
        return [Change(c.section, c.field, c.old, c.new) for c in changes]

    # --- serving -------------------------------------------------------------------

    def daemon(self, *, paused: bool = False, exit_on_poweroff: bool | None = None,
               export_dir: str | Path | None = None, tcp_host_files: bool = False) -> Daemon:
        """The event-loop daemon over this machine (the CLI's; used by `serve`)."""
        from emud.daemon import Daemon
        from emud.monitor import SnapshotService

        daemon = Daemon(self._core, start_paused=paused,
                        exit_on_poweroff=bool(exit_on_poweroff))
        daemon.snapshots = SnapshotService(daemon, self._snapshots_path, export_dir=export_dir,
                                           tcp_host_files=tcp_host_files)
        return daemon

    async def serve_async(self, *, gdb: str | Address | None = None,
                          qmp: str | Address | None = None, paused: bool = False,
                          exit_on_poweroff: bool | None = None,
                          ready: Callable[[str], None] | None = None,
                          daemon: Daemon | None = None, signals: bool = True) -> int:
        """Serve gdb and/or QMP in the running event loop until `quit`; returns the exit
        code.  By default power-off ends the serving only with neither gdb nor QMP."""
        from emud.cli import serve
        from emud.listen import parse_address

        def address(a: str | Address | None) -> Address | None:
            return parse_address(a) if isinstance(a, str) else a

        if daemon is None:
            if exit_on_poweroff is None:
                exit_on_poweroff = not (gdb or qmp)
            daemon = self.daemon(paused=paused, exit_on_poweroff=exit_on_poweroff)
        self._daemon = daemon
        return await serve(daemon, address(gdb), address(qmp), ready, signals=signals)

    def serve(self, **options: Any) -> int:
        """`serve_async` in a new event loop, blocking until quit (what `emud run` does
        with a control plane)."""
        import asyncio

        return asyncio.run(self.serve_async(**options))

    @contextmanager
    def serving(self, *, gdb: str | None = None, qmp: str | None = None,
                paused: bool = True) -> Iterator[Server]:
        """Serve in a background thread while the block runs (for a test that attaches
        gdb or a QMP client); the machine belongs to that thread until the block ends,
        when the daemon quits and the thread is joined.  Paused by default, so the
        test decides when the guest runs."""
        import asyncio
        import threading

        server = Server(self)
        started = threading.Event()
        result: list[BaseException] = []

        def ready(banner: str) -> None:
            server.banner = banner
            started.set()

        async def main() -> None:
            server.loop = asyncio.get_running_loop()
            await self.serve_async(gdb=gdb, qmp=qmp, paused=paused, exit_on_poweroff=False,
                                   ready=ready, signals=False)

        def thread_main() -> None:
            try:
                asyncio.run(main())
            except BaseException as e:  # handed to the caller's thread
                result.append(e)
            finally:
                started.set()

        thread = threading.Thread(target=thread_main, name="emud-serve", daemon=True)
        thread.start()
        started.wait()
        if result:
            thread.join()
            raise EmudError(f"cannot serve: {result[0]}") from None
        try:
            yield server
        finally:
            if server.loop is not None and self._daemon is not None:
                server.loop.call_soon_threadsafe(self._daemon.quit, "host-qmp-quit")
            thread.join()

    def close(self) -> None:
        """Close the serial backends (sockets, files) and the semihosting files."""
        self._core.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Server:
    """A machine being served by `Machine.serving`: `banner` says where it listens."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.banner = ""
        self.loop: asyncio.AbstractEventLoop | None = None

    def address(self, what: str) -> str:
        """Where "gdb server" or "QMP" listens, from the banner (e.g. 127.0.0.1:40123)."""
        for line in self.banner.splitlines():
            if what in line and " on " in line:
                return line.rsplit(" on ", 1)[1]
        raise EmudError(f"not serving {what}")
