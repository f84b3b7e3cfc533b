"""Whole-machine save and load, snapshot diff, and QEMU-format stream export/import.

A machine's state is its configuration record, the virtual clock, every
device's vmstate section, the CPU and RAM.  Loading is two-phase: every
section is decoded and validated against the running machine first
(`stage`), and only a fully valid snapshot is applied, in one step that
cannot fail.  Any problem raises `MigrationError` naming the section and
field, and leaves the machine untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emud.clock import VMSTATE_VIRTUAL_CLOCK
from emud.cpu.hart import VMSTATE_HART, HartState
from emud.snapshots import (
    DIGEST_SIZE,
    PAGE_SIZE,
    Section,
    SnapshotData,
    SnapshotInfo,
    SnapshotStore,
)
from emud.vmstate import (
    QEMU_VM_EOF,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_VMDESCRIPTION,
    Staged,
    State,
    VMStateDescription,
    VMStateError,
    parse_section_header,
    section_footer,
    section_header,
)

if TYPE_CHECKING:
    from mmap import mmap

    from emud.machine import Machine

MACHINE_TYPE = "emud-virt"
CONFIG_VERSION = 2  # 2: the board record, device properties by id


class MigrationError(Exception):
    """A snapshot or stream that cannot be loaded into this machine."""


@dataclass(frozen=True)
class SectionSlot:
    """One section of a machine: its description, the object it saves, its instance."""

    vmsd: VMStateDescription
    obj: Any
    instance_id: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.vmsd.name, self.instance_id)

    @property
    def label(self) -> str:
        """How messages and diffs name it: `pl011`, or `pl011#1` for a second instance."""
        return self.vmsd.name if not self.instance_id else f"{self.vmsd.name}#{self.instance_id}"


def _sections(machine: Machine) -> list[SectionSlot]:
    """Every section in save and apply order: the clock first (device timers are
    absolute deadlines on it), the board's devices by (`migrate_order`, board
    position) -- interrupt controllers late, after their sources -- and the CPU last
    (its mip is what the interrupt lines carry at that moment).  Devices of one
    description are instances 0, 1, ... in board order, as QEMU numbers them."""
    out = [SectionSlot(VMSTATE_VIRTUAL_CLOCK, machine.clock)]
    devices = sorted(enumerate(machine.devices), key=lambda d: (d[1].migrate_order, d[0]))
    seen: dict[str, int] = {}
    for _, device in devices:
        if device.vmstate is None:
            continue
        instance = seen.get(device.vmstate.name, 0)
        seen[device.vmstate.name] = instance + 1
        out.append(SectionSlot(device.vmstate, device, instance))
    out.append(SectionSlot(VMSTATE_HART, HartState(machine.hart)))
    return out


# --- save -----------------------------------------------------------------------------


def machine_config(machine: Machine) -> dict[str, Any]:
    """What must match for a snapshot to load: the board, RAM, clock mode, devices, image."""
    return {
        "machine": MACHINE_TYPE,
        "config_version": CONFIG_VERSION,
        "ram_size": machine.ram.size,
        "icount_shift": machine.clock.shift,
        "board": machine.board.record(props=False),
        "devices": {d.id: d.property_values() for d in machine.devices if d.properties()},
        "image_sha256": machine.image.digest if machine.image else None,
        "image_name": machine.image.path.name if machine.image else None,
    }


# Entries that describe but need not match: the same build under another file name loads.
INFORMATIONAL = frozenset({"image_name"})
SHORT_DIGEST = 16  # hex digits: as in the default store's file name


def describe_image(config: dict[str, Any]) -> str:
    """`counter.elf (sha256 1a2b3c4d5e6f7a8b)`: an image named for a person."""
    digest = config.get("image_sha256")
    if not isinstance(digest, str):
        return "no image"
    name = config.get("image_name")
    short = f"sha256 {digest[:SHORT_DIGEST]}"
    return f"{name} ({short})" if isinstance(name, str) else f"an image ({short})"


def describe_board(record: Any) -> str:
    """`emud-virt (syscon, clint, hpet, plic, uart0 pl011@0x10000000 irq 10)`, short."""
    if not isinstance(record, dict) or not isinstance(record.get("device"), list):
        return repr(record)
    slots = []
    for slot in record["device"]:
        if not isinstance(slot, dict):
            continue
        text = f"{slot.get('id')}"
        if slot.get("id") != slot.get("type"):
            text += f" {slot.get('type')}"
        if isinstance(slot.get("base"), int):
            text += f"@{slot['base']:#x}"
        if slot.get("irq") is not None:
            text += f" irq {slot['irq']}"
        slots.append(text)
    wires = ", ".join(map(str, record.get("wires") or []))
    return f"{record.get('name')} ({', '.join(slots)}; wires {wires})"


def capture(machine: Machine, *, copy_ram: bool = True) -> SnapshotData:
    """The machine's state; `copy_ram=False` lends the live RAM (use it before running on)."""
    sections = [Section(s.vmsd.name, s.instance_id, s.vmsd.version_id, s.vmsd.save(s.obj))
                for s in _sections(machine)]
    ram = bytes(machine.ram.data) if copy_ram else machine.ram.data
    return SnapshotData(machine_config(machine), sections, ram, machine.clock.now_ns,
                        machine.clock.icount)


# --- load -----------------------------------------------------------------------------


def _config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in sorted((set(saved) | set(current)) - INFORMATIONAL):
        if saved.get(key) != current.get(key):
            if key == "board":
                return (f"configuration mismatch: the snapshot's board is "
                        f"{describe_board(saved.get(key))}, this machine's is "
                        f"{describe_board(current.get(key))}")
            if key == "image_sha256":
                return (f"configuration mismatch: the snapshot is of {describe_image(saved)}, "
                        f"this machine runs {describe_image(current)}")
            return (f"configuration mismatch: {key} is {saved.get(key)!r} in the snapshot, "
                    f"{current.get(key)!r} in this machine")
    return None


def stage(machine: Machine, snap: SnapshotData, *, same_image: bool = True
          ) -> Callable[[], None]:
    """Validate `snap` completely against `machine`; returns the function that applies it.

    `same_image=False` accepts a snapshot of another image (a scratch machine has none).
    """
    current = machine_config(machine)
    if not same_image:
        current["image_sha256"] = snap.config.get("image_sha256")
        current["image_name"] = snap.config.get("image_name")
    problem = _config_mismatch(snap.config, current)
    if problem:
        raise MigrationError(problem)
    if len(snap.ram) != machine.ram.size:
        raise MigrationError(f"ram: {len(snap.ram)} bytes in the snapshot, "
                             f"{machine.ram.size} in this machine")
    expected = _sections(machine)
    keys = {(s.name, s.instance_id) for s in snap.sections}
    known = {slot.key for slot in expected}
    names = {slot.vmsd.name for slot in expected}
    for section in snap.sections:
        if section.name not in names:
            raise MigrationError(f"unknown section '{section.name}'")
        if (section.name, section.instance_id) not in known:
            raise MigrationError(f"{section.name}: no instance {section.instance_id}")
    if len(keys) != len(snap.sections):
        raise MigrationError("a section appears twice")
    for slot in expected:
        if slot.key not in keys:
            raise MigrationError(f"section '{slot.label}' is missing")
    staged = list(_decode(machine, snap).values())  # in apply order
    ram = snap.ram

    def apply() -> None:
        machine.ram.data[:] = ram
        for item in staged:
            item.apply()
        machine.hart.flush_code()
        for serial in machine.serials:  # held host input may enter the loaded FIFOs
            serial.accept_input()
        machine.exit_code = None
        machine.hart.stop_requested = False

    return apply


def _decode(machine: Machine, snap: SnapshotData) -> dict[str, Staged]:
    """Decode every section the machine knows, in apply order (keyed by label);
    nothing is applied."""
    by_key = {(s.name, s.instance_id): s for s in snap.sections}
    staged: dict[str, Staged] = {}
    for slot in _sections(machine):
        section = by_key.get(slot.key)
        if section is None:
            continue
        try:
            staged[slot.label] = slot.vmsd.decode(slot.obj, section.data, section.version_id)
        except VMStateError as e:
            raise MigrationError(str(e)) from None
    return staged


def restore(machine: Machine, snap: SnapshotData, *, same_image: bool = True) -> None:
    stage(machine, snap, same_image=same_image)()


def savevm(machine: Machine, store: SnapshotStore, tag: str) -> SnapshotInfo:
    try:
        return store.save(tag, capture(machine, copy_ram=False))
    except VMStateError as e:
        raise MigrationError(str(e)) from None


def loadvm(machine: Machine, store: SnapshotStore, tag: str) -> None:
    """Load snapshot `tag`: all or nothing (StoreError and MigrationError leave no trace)."""
    restore(machine, store.load(tag))


# --- diff -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    section: str  # "config", "clock", a device name, "cpu", "ram"
    field: str
    old: Any
    new: Any


def _plain(value: Any) -> Any:
    """Staged values with nested structs turned into dicts (comparable, printable)."""
    if isinstance(value, State):
        value = value.values()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(f"{prefix}[{i}]", item, out)
    else:
        out[prefix] = value


def page_ranges(a: bytes | bytearray | mmap, b: bytes | bytearray | mmap, base: int
                ) -> list[tuple[int, int]]:
    """Address ranges [start, end] of the pages that differ between two RAM images."""
    ranges: list[tuple[int, int]] = []
    for offset in range(0, max(len(a), len(b)), PAGE_SIZE):
        if a[offset : offset + PAGE_SIZE] != b[offset : offset + PAGE_SIZE]:
            start = base + offset
            if ranges and ranges[-1][1] + 1 == start:
                ranges[-1] = (ranges[-1][0], start + PAGE_SIZE - 1)
            else:
                ranges.append((start, start + PAGE_SIZE - 1))
    return ranges


def diff(machine: Machine, a: SnapshotData, b: SnapshotData) -> list[Change]:
    """Field-by-field differences from `a` to `b` (config, each section, RAM pages)."""
    changes: list[Change] = []
    for key in sorted(set(a.config) | set(b.config)):
        if a.config.get(key) != b.config.get(key):
            changes.append(Change("config", key, a.config.get(key), b.config.get(key)))
    old, new = _decode(machine, a), _decode(machine, b)
    for slot in _sections(machine):
        label = slot.label
        flat_old: dict[str, Any] = {}
        flat_new: dict[str, Any] = {}
        if label in old:
            _flatten("", _plain(old[label].state), flat_old)
        if label in new:
            _flatten("", _plain(new[label].state), flat_new)
        for key in flat_old.keys() | flat_new.keys():
            if flat_old.get(key) != flat_new.get(key):
                changes.append(Change(label, key, flat_old.get(key), flat_new.get(key)))
    order = {slot.label: i for i, slot in enumerate(_sections(machine))}
    changes.sort(key=lambda c: (order.get(c.section, -1), c.field))
    for start, end in page_ranges(a.ram, b.ram, machine.ram.base):
        changes.append(Change("ram", f"{start:#010x}-{end:#010x}", None, None))
    return changes


# --- QEMU-format stream (QEVM) -----------------------------------------------------------

QEVM_MAGIC = 0x5145564D
QEVM_VERSION = 3
CONFIGURATION = 0x07
SECTION_START, SECTION_END = 0x01, 0x03  # iterative sections (RAM); FULL etc. in vmstate
RAM_MEM_SIZE, RAM_ZERO, RAM_PAGE, RAM_EOS, RAM_CONTINUE = 0x04, 0x02, 0x08, 0x10, 0x20
RAM_IDSTR = "emud-virt.ram"
RAM_SECTION_VERSION = 4


def export_stream(machine: Machine, snap: SnapshotData) -> bytes:
    """A snapshot as QEMU's migration stream: header, configuration, RAM, devices, vmdesc.

    The emud configuration record and the digests of the content travel in an
    `emud-config` device section (a JSON buffer) so that an import can check them;
    QEMU's tools show it as an opaque buffer.
    """
    out = bytearray(QEVM_MAGIC.to_bytes(4, "big") + QEVM_VERSION.to_bytes(4, "big"))
    name = MACHINE_TYPE.encode()
    out += bytes([CONFIGURATION]) + len(name).to_bytes(4, "big") + name
    # RAM: START with the block list, then END with every non-zero page.
    ram_id = 0
    idstr = RAM_IDSTR.encode()
    # A START header is a FULL header with another type byte.
    out += bytes([SECTION_START]) + section_header(ram_id, "ram", 0, RAM_SECTION_VERSION)[1:]
    out += (len(snap.ram) | RAM_MEM_SIZE).to_bytes(8, "big")
    out += bytes([len(idstr)]) + idstr + len(snap.ram).to_bytes(8, "big")
    out += RAM_EOS.to_bytes(8, "big") + section_footer(ram_id)
    out += bytes([SECTION_END]) + ram_id.to_bytes(4, "big")
    first = True
    for offset in range(0, len(snap.ram), PAGE_SIZE):
        page = snap.ram[offset : offset + PAGE_SIZE]
        if not any(page):
            continue
        flags = RAM_PAGE | (0 if first else RAM_CONTINUE)
        out += (offset | flags).to_bytes(8, "big")
        if first:
            out += bytes([len(idstr)]) + idstr
            first = False
        out += page
    out += RAM_EOS.to_bytes(8, "big") + section_footer(ram_id)
    # The emud configuration record travels as an `emud-config` section holding JSON,
    # so that an import can check it; QEMU's tools see an opaque buffer.  The stream
    # itself has no checksums, so the record also carries a digest of the RAM and of
    # every device section: a damaged stream is refused instead of loading other state.
    config = json.dumps({"config": snap.config, "digests": stream_digests(snap)},
                        sort_keys=True).encode()
    devices: list[dict[str, Any]] = [
        {"name": "emud-config", "instance_id": 0, "size": len(config),
         "fields": [{"name": "data", "size": len(config), "type": "buffer"}]}]
    out += section_header(1, "emud-config", 0, 1) + config + section_footer(1)
    # Describe each section from a scratch machine in the snapshot's state, so the
    # description covers exactly the subsections and array sizes the bytes hold.
    scratch = scratch_machine(snap.config)
    restore(scratch, snap, same_image=False)
    by_key = {(s.name, s.instance_id): s for s in snap.sections}
    for section_id, slot in enumerate(_sections(scratch), start=2):
        vmsd = slot.vmsd
        section = by_key[slot.key]
        payload, entry = vmsd.save_described(slot.obj, section.instance_id)
        assert payload == section.data, f"{slot.label} does not re-encode to its own bytes"
        out += section_header(section_id, vmsd.name, section.instance_id, section.version_id)
        out += payload + section_footer(section_id)
        devices.append(entry)
    out += bytes([QEMU_VM_EOF])
    vmdesc = json.dumps({"page_size": PAGE_SIZE, "devices": devices}).encode()
    out += bytes([QEMU_VM_VMDESCRIPTION]) + len(vmdesc).to_bytes(4, "big") + vmdesc
    return bytes(out)


def _digest(data: bytes | bytearray | memoryview | mmap) -> str:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def stream_digests(snap: SnapshotData) -> dict[str, str]:
    """What `import_stream` checks: the configuration record (its informational entries
    too), the whole RAM, and each section with its header fields."""
    digests = {"config": _digest(json.dumps(snap.config, sort_keys=True).encode()),
               "ram": _digest(snap.ram)}
    for s in snap.sections:
        digests[f"section {s.name}"] = _digest(f"{s.instance_id}:{s.version_id}:".encode()
                                               + s.data)
    return digests


def stream_size_limit(ram_size: int) -> int:
    """The largest stream `export_stream` writes for this RAM size, with room to spare.

    Every page costs its 8-byte header plus its bytes (the block name once); the
    devices' sections, the configuration and the description fit in the last MiB.
    """
    return ram_size + (ram_size // PAGE_SIZE) * 8 + (1 << 20)


def scratch_machine(config: dict[str, Any]) -> Machine:
    """A machine built from a configuration record, with no image and no serial output."""
    from emud.board import board_from_record
    from emud.device import DeviceError
    from emud.machine import Machine

    try:
        board = board_from_record(config["board"], "the snapshot's board")
        props = config.get("devices") or {}
        for slot in board.slots:  # the values this machine ran with, -global included
            slot.props = dict(props.get(slot.id, slot.props))
        return Machine(ram_size=int(config["ram_size"]),
                       icount_shift=int(config["icount_shift"]), board=board)
    except (KeyError, TypeError, ValueError, DeviceError) as e:
        raise MigrationError(f"configuration record is unusable: {e}") from None


def import_stream(machine: Machine, data: bytes) -> SnapshotData:
    """Parse a QEVM stream written by `export_stream`; validated like a snapshot load.

    Nothing is sized from the stream: RAM is the configured size, and every record
    is checked against it before it is copied.  The digests in `emud-config` must
    match what was read, so a damaged stream is refused, naming the damaged part.
    """
    if len(data) > stream_size_limit(machine.ram.size):
        raise MigrationError(f"stream: {len(data)} bytes is more than a stream for "
                             f"{machine.ram.size} bytes of RAM can hold")
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise MigrationError(f"stream: truncated in {what} at offset {pos}")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    if int.from_bytes(take(4, "magic"), "big") != QEVM_MAGIC:
        raise MigrationError("stream: not a QEMU migration stream (bad magic)")
    version = int.from_bytes(take(4, "version"), "big")
    if version != QEVM_VERSION:
        raise MigrationError(f"stream: unsupported stream version {version}")
    if take(1, "configuration")[0] != CONFIGURATION:
        raise MigrationError("stream: the configuration record is missing")
    machine_type = take(int.from_bytes(take(4, "machine type length"), "big"), "machine type")
    if machine_type != MACHINE_TYPE.encode():
        raise MigrationError(f"stream: machine type {machine_type!r}, expected {MACHINE_TYPE}")
    ram = bytearray(machine.ram.size)
    sections: list[Section] = []
    record: Any = None
    while True:
        kind = take(1, "section type")[0]
        if kind == QEMU_VM_EOF:
            break
        if kind in (SECTION_START, SECTION_END):
            section_id = int.from_bytes(take(4, "section id"), "big")
            if kind == SECTION_START:
                idstr = take(take(1, "idstr length")[0], "idstr")
                take(8, "instance and version")
                if idstr != b"ram":
                    raise MigrationError(f"stream: unknown iterative section {idstr!r}")
            pos = _read_ram(data, pos, ram)
            footer = take(5, "footer")
            if footer != section_footer(section_id):
                raise MigrationError(f"stream: bad footer after section {section_id}")
        elif kind == QEMU_VM_SECTION_FULL:
            try:
                header, start = parse_section_header(data, pos - 1)
            except VMStateError as e:
                raise MigrationError(str(e)) from None
            end = _find_footer(machine, data, start, header.idstr, header.version_id,
                               header.section_id)
            payload = data[start:end]
            pos = end + 5
            if header.idstr == "emud-config":
                try:
                    record = json.loads(payload)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise MigrationError("stream: the emud-config section is corrupt") from None
            else:
                sections.append(Section(header.idstr, header.instance_id, header.version_id,
                                        bytes(payload)))
        else:
            raise MigrationError(f"stream: unexpected section type {kind:#04x} at offset "
                                 f"{pos - 1}")
    if record is None:
        raise MigrationError("stream: no emud-config section (not written by emud)")
    config, digests = _config_record(record)
    clock = next((s for s in sections if s.name == VMSTATE_VIRTUAL_CLOCK.name), None)
    if clock is None or len(clock.data) != 16:
        raise MigrationError("stream: section 'emud-clock' is missing or malformed")
    snap = SnapshotData(config, sections, bytes(ram), int.from_bytes(clock.data[:8], "big"),
                        int.from_bytes(clock.data[8:], "big"))
    stage(machine, snap)  # names a configuration mismatch or an undecodable section first
    _check_digests(snap, digests)
    return snap


def _config_record(record: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The configuration and the digests from an `emud-config` payload, shape-checked."""
    config = record.get("config") if isinstance(record, dict) else None
    digests = record.get("digests") if isinstance(record, dict) else None
    if not isinstance(config, dict) or not isinstance(digests, dict):
        raise MigrationError("stream: the emud-config section has no configuration and "
                             "digests (corrupt, or written by an older emud)")
    return config, digests


def _check_digests(snap: SnapshotData, digests: dict[str, str]) -> None:
    actual = stream_digests(snap)
    for name in actual.keys() | digests.keys():
        if actual.get(name) != digests.get(name):
            what = {"ram": "the RAM", "config": "the configuration record"}.get(
                name, f"section '{name.removeprefix('section ')}'")
            raise MigrationError(f"stream: {what} is damaged (it does not match its digest "
                                 "in emud-config)")


def _read_ram(data: bytes, pos: int, ram: bytearray) -> int:
    """Read RAM records up to EOS into `ram` (the configured size); returns the position
    after EOS.  A record outside `ram` or a block of another size is refused."""
    while True:
        if pos + 8 > len(data):
            raise MigrationError(f"stream: RAM section truncated at offset {pos}")
        word = int.from_bytes(data[pos : pos + 8], "big")
        pos += 8
        flags, addr = word & (PAGE_SIZE - 1), word & ~(PAGE_SIZE - 1)
        if flags & RAM_EOS:
            return pos
        if flags & RAM_MEM_SIZE:
            if pos + 1 > len(data):
                raise MigrationError("stream: RAM block list truncated")
            length = data[pos]
            pos += 1 + length
            block = int.from_bytes(data[pos : pos + 8], "big")
            pos += 8
            if addr != len(ram) or block != len(ram):
                raise MigrationError(f"stream: a RAM block of {block} bytes, this machine has "
                                     f"{len(ram)}")
            continue
        if not flags & RAM_CONTINUE:
            length = data[pos] if pos < len(data) else 0
            pos += 1 + length
        if addr + PAGE_SIZE > len(ram):
            raise MigrationError(f"stream: RAM page at {addr:#x} is outside the "
                                 f"{len(ram)} bytes of RAM")
        if flags & RAM_PAGE:
            page = data[pos : pos + PAGE_SIZE]
            if len(page) != PAGE_SIZE:
                raise MigrationError(f"stream: RAM page at {addr:#x} truncated")
            pos += PAGE_SIZE
        elif flags & RAM_ZERO:
            if pos >= len(data):
                raise MigrationError(f"stream: RAM page at {addr:#x} truncated")
            page = bytes([data[pos]]) * PAGE_SIZE
            pos += 1
        else:
            raise MigrationError(f"stream: unsupported RAM record flags {flags:#x}")
        ram[addr : addr + PAGE_SIZE] = page


def _find_footer(machine: Machine, data: bytes, start: int, idstr: str, version: int,
                 section_id: int) -> int:
    """Where a FULL section's payload ends: decode it when we know the vmsd, else search."""
    footer = section_footer(section_id)
    by_name = {slot.vmsd.name: (slot.vmsd, slot.obj) for slot in _sections(machine)}
    if idstr in by_name:
        vmsd, obj = by_name[idstr]
        end = data.find(footer, start)
        while end != -1:
            try:
                vmsd.decode(obj, data[start:end], version)
                return end
            except VMStateError:
                end = data.find(footer, end + 1)
        raise MigrationError(f"stream: section '{idstr}' does not decode")
    end = data.find(footer, start)
    if end == -1:
        raise MigrationError(f"stream: section '{idstr}' has no footer")
    return end
