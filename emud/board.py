"""The board as data: device slots and wires, the device types, `-device` and `--board`.

A board is a table (`emud/boards/emud-virt.toml` shows the built-in one): every
slot names a device type, an id, the base of its MMIO window, the interrupt
controller input its outputs start at (`irq`) and its properties; `wires`
connects any other line.  `Machine` builds everything from it.  The same
record travels in a snapshot's configuration, so a scratch machine (stream
export) is rebuilt from it.

Device types are the built-in ones (`emud/hw/`), those pip-installed packages
declare in the entry-point group `emud.devices`, and plug-ins named on the
command line as `path/to/file.py:ClassName` or `module:ClassName`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

from emud.device import Device, DeviceError, Property

ENTRY_POINT_GROUP = "emud.devices"


class BoardError(DeviceError):
    """A board or -device description that cannot be built (one line, names the slot)."""


# --- device types ----------------------------------------------------------------------


@functools.cache
def builtin_types() -> dict[str, type[Device]]:
    """Every Device class defined in a module of `emud.hw`: a new built-in device is
    its own file there, nothing else to register."""
    import emud.hw

    # The package's *.py files, listed here: pkgutil.iter_modules imports inspect, which
    # costs a plain run more than building its board.
    names = {entry.name[:-3] for where in emud.hw.__path__ for entry in os.scandir(where)
             if entry.name.endswith(".py") and not entry.name.startswith("_")}
    found: dict[str, type[Device]] = {}
    for name in sorted(names):
        module = importlib.import_module(f"emud.hw.{name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Device)
                    and value.__module__ == module.__name__):
                found[value.name] = value
    return dict(sorted(found.items()))


def installed_types() -> dict[str, str]:
    """Types pip-installed packages add: entry-point name -> `module:Class`."""
    from importlib import metadata  # slow to import: only when a type is not built in

    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def device_types() -> dict[str, str]:
    """Every type `-device help` lists: name -> where it comes from."""
    found = {name: "built in" for name in builtin_types()}
    for name, value in installed_types().items():
        found.setdefault(name, value)
    return dict(sorted(found.items()))


_plugins: dict[str, type[Device]] = {}


def _load_class(spec: str) -> type[Device]:
    """`path/to/file.py:Class` or `module:Class`; any failure is one BoardError line."""
    where, _, attr = spec.rpartition(":")
    if spec in _plugins:
        return _plugins[spec]
    try:
        if where.endswith(".py"):
            path = Path(where).resolve()
            if not path.is_file():
                raise BoardError(f"device type '{spec}': no file {where}")
            name = f"emud_plugin_{abs(hash(str(path))):x}_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise BoardError(f"device type '{spec}': cannot load {where}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except BoardError:
        raise
    except Exception as e:  # the plug-in's own error, whatever it is, in one line
        raise BoardError(f"device type '{spec}': import failed: {type(e).__name__}: {e}"
                         ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise BoardError(f"device type '{spec}': {where} has no Device class {attr!r}")
    _plugins[spec] = cls
    return cls


def find_type(type_name: str) -> type[Device]:
    """A device class by type name, entry point, or `file.py:Class` / `module:Class`."""
    builtin = builtin_types()
    if type_name in builtin:
        return builtin[type_name]
    installed = installed_types()
    if type_name in installed:
        return _load_class(installed[type_name])
    if ":" in type_name:
        return _load_class(type_name)
    raise BoardError(f"'{type_name}' is not a valid device model name "
                     "(-device help lists them)")


def type_help(cls: type[Device]) -> list[str]:
    """`-device TYPE,help`: QEMU's layout, `name=<type> - doc (default: value)`."""
    lines = [f"{cls.name} options:"]
    for prop in sorted(cls.properties(), key=lambda p: p.name):
        default = prop.default
        shown = ("on" if default else "off") if isinstance(default, bool) else f"{default:#x}" \
            if isinstance(default, int) and default > 9 else str(default)
        doc = f" - {prop.doc}" if prop.doc else ""
        lines.append(f"  {prop.name}=<{_type_word(prop)}>{doc} (default: {shown})")
    if cls.mmio_size:
        lines.append(f"  (MMIO window {cls.mmio_size:#x} bytes)")
    if cls.trace_events:
        lines.append("  trace events: " + " ".join(ev.name for ev in cls.trace_events))
    return lines


def _type_word(prop: Property[Any]) -> str:
    return "bool" if prop.kind is bool else prop.type_name


# --- the board table ---------------------------------------------------------------------


class Slot:
    """One device of a board: what a TOML `[[device]]` table or a -device flag says.
    (A plain class, as Board: dataclasses cost a plain run more than its board.)"""

    def __init__(self, type: str, id: str = "", base: int | None = None,  # noqa: A002
                 irq: int | None = None, props: dict[str, Any] | None = None) -> None:
        self.type = type
        self.id = id or type.rpartition(":")[2].lower()
        self.base = base
        self.irq = irq
        self.props: dict[str, Any] = {} if props is None else props

    def record(self, props: bool = True) -> dict[str, Any]:
        out = {"type": self.type, "id": self.id, "base": self.base, "irq": self.irq}
        return out | {"props": dict(self.props)} if props else out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Slot) and self.record() == other.record()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Slot({self.type!r}, {self.id!r}, {self.base!r}, {self.irq!r}, {self.props!r})"


class Wire(NamedTuple):
    src: str
    output: str
    dst: str
    input: str

    def __str__(self) -> str:
        return f"{self.src}.{self.output} -> {self.dst}.{self.input}"


def parse_wire(text: str) -> Wire:
    src, arrow, dst = text.partition("->")
    ends = [part.strip().rpartition(".") for part in (src, dst)]
    if not arrow or any(not a or not b for a, _, b in ends):
        raise BoardError(f"wire {text!r}: use 'DEVICE.OUTPUT -> DEVICE.INPUT'")
    return Wire(ends[0][0], ends[0][2], ends[1][0], ends[1][2])


class Board:
    def __init__(self, name: str, ram_base: int, interrupt_controller: str,
                 slots: list[Slot], wires: list[Wire]) -> None:
        self.name = name
        self.ram_base = ram_base
        self.interrupt_controller = interrupt_controller
        self.slots = slots
        self.wires = wires

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Board) and self.record() == other.record()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Board({self.name!r}, {len(self.slots)} slots)"

    def record(self, props: bool = True) -> dict[str, Any]:
        """The board as plain data; a snapshot's configuration record has it without
        the slots' properties (the devices' final values are recorded beside it)."""
        return {"name": self.name, "ram-base": self.ram_base,
                "interrupt-controller": self.interrupt_controller,
                "wires": [str(w) for w in self.wires],
                "device": [s.record(props) for s in self.slots]}

    def with_devices(self, extra: list[Slot]) -> Board:
        return Board(self.name, self.ram_base, self.interrupt_controller,
                     [*self.slots, *extra], list(self.wires))


def _int(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BoardError(f"{where}: '{key}' must be a non-negative integer, got {value!r}")
    return value


def board_from_record(data: Any, where: str = "board") -> Board:
    """A Board from parsed TOML (or a configuration record); shapes checked, one line."""
    if not isinstance(data, dict):
        raise BoardError(f"{where}: not a table")
    known = {"name", "ram-base", "interrupt-controller", "wires", "device"}
    for key in data:
        if key not in known:
            raise BoardError(f"{where}: unknown key '{key}' (keys: {', '.join(sorted(known))})")
    slots = []
    entries = data.get("device", [])
    if not isinstance(entries, list):
        raise BoardError(f"{where}: 'device' must be an array of tables ([[device]])")
    for n, entry in enumerate(entries):
        here = f"{where}: device {n + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise BoardError(f"{here}: needs a 'type' string")
        extra = set(entry) - {"type", "id", "base", "irq", "props"}
        if extra:
            raise BoardError(f"{here}: unknown key '{sorted(extra)[0]}' (type, id, base, irq, "
                             "props)")
        props = entry.get("props") or {}
        ident = entry.get("id") or ""
        if not isinstance(props, dict) or not isinstance(ident, str):
            raise BoardError(f"{here}: 'props' must be a table and 'id' a string")
        base, irq = entry.get("base"), entry.get("irq")
        slots.append(Slot(entry["type"], ident,
                          None if base is None else _int(here, "base", base),
                          None if irq is None else _int(here, "irq", irq), dict(props)))
    wires = data.get("wires", [])
    if not isinstance(wires, list) or not all(isinstance(w, str) for w in wires):
        raise BoardError(f"{where}: 'wires' must be an array of strings")
    name = data.get("name", "board")
    controller = data.get("interrupt-controller", "")
    if not isinstance(name, str) or not isinstance(controller, str):
        raise BoardError(f"{where}: 'name' and 'interrupt-controller' must be strings")
    return Board(name, _int(where, "ram-base", data.get("ram-base", 0x8000_0000)), controller,
                 slots, [parse_wire(w) for w in wires])


def load_board(path: str | Path) -> Board:
    """`--board FILE.toml`."""
    import tomllib  # only for a board file: the built-in board is EMUD_VIRT

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise BoardError(f"board {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise BoardError(f"board {path}: {e}") from None
    board = board_from_record(data, f"board {path}")
    # A plug-in file named by a board file is found next to it, wherever emud runs.
    here = Path(path).parent
    for slot in board.slots:
        file, sep, cls = slot.type.rpartition(":")
        if sep and file.endswith(".py") and not Path(file).is_absolute():
            slot.type = f"{here / file}:{cls}"
    return board


# The built-in emud-virt board, as the record emud/boards/emud-virt.toml parses to
# (tests/test_board.py keeps the two equal): a plain run needs no TOML parser for it.
EMUD_VIRT: dict[str, Any] = {
    "name": "emud-virt",
    "ram-base": 0x8000_0000,
    "interrupt-controller": "plic",
    "wires": ["plic.meip -> cpu.mei", "clint.msip -> cpu.msi", "clint.mtip -> cpu.mti"],
    "device": [
        {"type": "syscon", "base": 0x0010_0000},
        {"type": "clint", "base": 0x0200_0000},
        {"type": "hpet", "base": 0xFED0_0000, "irq": 32},
        {"type": "plic", "base": 0x0C00_0000},
        {"type": "pl011", "id": "uart0", "base": 0x1000_0000, "irq": 10},
    ],
}


def default_board() -> Board:
    return board_from_record(EMUD_VIRT, "emud-virt")


def parse_device(text: str) -> Slot | None:
    """`-device TYPE[,id=ID][,addr=ADDR][,irq=N][,PROP=VALUE...]`; None for `TYPE,help`."""
    type_name, *items = text.split(",")
    if not type_name:
        raise BoardError(f"-device {text!r}: no device type")
    slot = Slot(type_name)
    for item in items:
        key, eq, value = item.partition("=")
        if key == "help" and not eq:
            return None
        if not eq:
            raise BoardError(f"-device {type_name}: '{item}' is not PROP=VALUE")
        if key == "id":
            slot.id = value
        elif key in ("addr", "irq"):
            try:
                number = int(value, 0)
            except ValueError:
                raise BoardError(f"-device {type_name}: {key} must be a number, not "
                                 f"{value!r}") from None
            if key == "addr":
                slot.base = number
            else:
                slot.irq = number
        else:
            slot.props[key] = value
    return slot
