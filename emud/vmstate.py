"""Declarative migration state with QEMU's wire encoding (docs/migration.md A3-A5).

A device declares a `VMStateDescription` next to its fields: a name, a version
range, ordered typed fields (optionally version-gated, arrays of fixed size or
sized by an earlier field, nested structs, timers), subsections with a
`needed` test, and hooks.  From that one declaration this module

* encodes the section payload byte for byte as QEMU does (big-endian scalars,
  subsection framing, no tags or lengths),
* produces the JSON entry QEMU writes into the stream's trailing vmdesc,
* frames a whole QEMU_VM_SECTION_FULL section (header and footer), and
* loads a payload in two phases: `decode` parses and validates everything into a
  staging `State` without touching the device, `Staged.apply` then writes it.
  A load that fails leaves the device exactly as it was.

Fields name device attributes (`attr`, default the field name).  Subsection
fields live on the same object as their parent's, like QEMU's opaque pointer.

Hooks (all optional):

* `pre_save(obj)` before encoding, `post_save(obj)` after (QEMU's).
* `pre_load(state)` before decoding: set defaults for fields a stream may lack.
* `post_load(state, version_id)` after decoding: check and fix up the staged
  values; raise `ValueError` to reject the load.  Nothing is applied yet.
* `loaded(obj)` after the staged values were written to the device: re-derive
  hidden state and output lines.  It must not fail.
* `needed(obj)` for a subsection: whether to send it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

if TYPE_CHECKING:
    from emud.clock import Timer


# Section and subsection framing bytes (A2, A4)
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_SECTION_FOOTER = 0x7E

TIMER_NOT_PENDING = (1 << 64) - 1  # a QEMUTimer that is not armed travels as all-ones


class VMStateError(Exception):
    """A section that cannot be saved or loaded; names the section and, when known, the field."""

    def __init__(self, section: str, message: str, field: str | None = None) -> None:
        self.section = section
        self.field = field
        self.message = message
        where = f"{section}: field '{field}'" if field else section
        super().__init__(f"{where}: {message}")


# --- field kinds ----------------------------------------------------------------------
# NamedTuples and plain classes, not dataclasses: every device module builds these at
# import, so a plain `emud run` does too, and dataclasses would cost it more than its run.


class Scalar(NamedTuple):
    """A fixed-size integer (or bool) encoded big-endian; `name` is the vmdesc type."""

    name: str
    size: int
    signed: bool = False

    def encode(self, value: Any) -> bytes:
        if self.name == "bool":
            return b"\x01" if value else b"\x00"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.name} value must be an int, not {type(value).__name__}")
        return value.to_bytes(self.size, "big", signed=self.signed)

    def decode(self, data: bytes) -> Any:
        if self.name == "bool":
            return data[0] != 0  # QEMU takes any non-zero byte as true
        return int.from_bytes(data, "big", signed=self.signed)


BOOL = Scalar("bool", 1)
INT8, UINT8 = Scalar("int8", 1, True), Scalar("uint8", 1)
INT16, UINT16 = Scalar("int16", 2, True), Scalar("uint16", 2)
INT32, UINT32 = Scalar("int32", 4, True), Scalar("uint32", 4)
INT64, UINT64 = Scalar("int64", 8, True), Scalar("uint64", 8)


class TimerKind(NamedTuple):
    """A `clock.Timer`: its absolute deadline in ns, all-ones when not pending."""

    name: str = "timer"
    size: int = 8


class Buffer(NamedTuple):
    """Raw bytes of a fixed size (`bytes`/`bytearray` attribute)."""

    size: int
    name: str = "buffer"


class Unused(NamedTuple):
    """Bytes the stream carries but nobody uses: zeros on save, skipped on load."""

    size: int
    name: str = "unused_buffer"


TIMER = TimerKind()
Kind = Scalar | TimerKind | Buffer | Unused


class Field(NamedTuple):
    """One entry of a vmsd's field list.

    `kind` is a scalar/timer/buffer/unused kind or a nested VMStateDescription
    (a struct).  `num` makes a fixed-size array, `num_field` an array whose
    length is the (already decoded) value of an earlier field of the same vmsd.
    `version`: present only in streams of at least that version.  `exists`:
    QEMU's field_exists test, called with the object (save) or the staged
    state (load) and the version.
    """

    name: str
    kind: Kind | VMStateDescription
    attr: str | None = None
    version: int = 0
    num: int | None = None
    num_field: str | None = None
    exists: Callable[[Any, int], bool] | None = None

    @property
    def key(self) -> str:
        return self.attr or self.name

    @property
    def is_array(self) -> bool:
        return self.num is not None or self.num_field is not None

    @property
    def type_name(self) -> str:
        return "struct" if isinstance(self.kind, VMStateDescription) else self.kind.name

    def compressible(self) -> bool:
        """QEMU's vmsd_can_compress: may an array be described by its first element?"""
        if self.exists is not None:
            return False
        if isinstance(self.kind, VMStateDescription):
            return not self.kind.subsections and all(
                f.compressible() for f in self.kind.fields if isinstance(f, Field)
            )
        return True


def unused(size: int) -> Field:
    """QEMU's VMSTATE_UNUSED(size)."""
    return Field("unused", Unused(size))


class Validate(NamedTuple):
    """QEMU's VMSTATE_VALIDATE: no bytes; on load `check(state)` returns an error or None."""

    name: str
    check: Callable[[State], str | None]


Entry = Field | Validate


class VMStateDescription:
    def __init__(self, name: str, version_id: int, minimum_version_id: int,
                 fields: Sequence[Entry], subsections: Sequence[Subsection] = (),
                 pre_save: Callable[[Any], None] | None = None,
                 post_save: Callable[[Any], None] | None = None,
                 pre_load: Callable[[State], None] | None = None,
                 post_load: Callable[[State, int], None] | None = None,
                 loaded: Callable[[Any], None] | None = None) -> None:
        self.name = name
        self.version_id = version_id
        self.minimum_version_id = minimum_version_id
        self.fields = fields
        self.subsections = subsections
        self.pre_save = pre_save
        self.post_save = post_save
        self.pre_load = pre_load
        self.post_load = post_load
        self.loaded = loaded
        self._check()

    def __repr__(self) -> str:
        return f"<VMStateDescription {self.name} v{self.version_id}>"

    def _check(self) -> None:
        seen: set[str] = set()
        for f in self.fields:
            if isinstance(f, Field) and f.num_field is not None and f.num_field not in seen:
                raise ValueError(f"{self.name}: array {f.name} is sized by {f.num_field!r}, "
                                 "which is not an earlier field")
            if isinstance(f, Field):
                seen.add(f.key)
        for sub in self.subsections:
            if not sub.vmsd.name.startswith(self.name + "/"):
                raise ValueError(f"subsection {sub.vmsd.name!r} must be named {self.name}/...")

    # --- save -------------------------------------------------------------------------

    def save(self, obj: Any) -> bytes:
        """The section payload, as QEMU encodes it."""
        out = bytearray()
        _save(self, obj, out, None)
        return bytes(out)

    def describe(self, obj: Any, instance_id: int = 0, idstr: str | None = None) -> dict[str, Any]:
        """The device's entry in QEMU's vmdesc JSON, for the state `obj` is in now."""
        return self.save_described(obj, instance_id, idstr)[1]

    def save_described(self, obj: Any, instance_id: int = 0,
                       idstr: str | None = None) -> tuple[bytes, dict[str, Any]]:
        """Payload and vmdesc entry from one pass (so they describe the same bytes)."""
        out = bytearray()
        entry: dict[str, Any] = {"name": idstr or self.name, "instance_id": instance_id}
        _save(self, obj, out, entry)
        return bytes(out), entry

    def save_section(self, obj: Any, section_id: int, instance_id: int = 0,
                     idstr: str | None = None) -> bytes:
        """A whole QEMU_VM_SECTION_FULL section: header, payload, footer."""
        header = section_header(section_id, idstr or self.name, instance_id, self.version_id)
        return header + self.save(obj) + section_footer(section_id)

    # --- load -------------------------------------------------------------------------

    def decode(self, obj: Any, data: bytes, version_id: int) -> Staged:
        """Parse and validate a payload into a staging state; `obj` is not modified."""
        reader = _Reader(bytes(data), self.name)
        state = _load(self, obj, reader, version_id, self.name)
        if reader.pos != len(reader.data):
            raise VMStateError(self.name, f"{len(reader.data) - reader.pos} unexpected bytes "
                               f"after the section's fields at offset {reader.pos}")
        return Staged(state)

    def load(self, obj: Any, data: bytes, version_id: int) -> None:
        """Decode and validate a payload, then apply it; all or nothing."""
        self.decode(obj, data, version_id).apply()

    def decode_section(self, obj: Any, data: bytes) -> tuple[SectionHeader, Staged]:
        """Parse a FULL section (header, payload, footer) for this vmsd; nothing is applied."""
        header, pos = parse_section_header(data)
        if header.idstr != self.name:
            raise VMStateError(self.name, f"section is for {header.idstr!r}")
        reader = _Reader(bytes(data), self.name, pos)
        state = _load(self, obj, reader, header.version_id, self.name)
        footer = reader.take(5, "section footer")
        if footer[0] != QEMU_VM_SECTION_FOOTER:
            raise VMStateError(self.name, f"expected the section footer at offset "
                               f"{reader.pos - 5}, found byte {footer[0]:#04x}")
        if int.from_bytes(footer[1:], "big") != header.section_id:
            raise VMStateError(self.name, "the footer closes another section id")
        if reader.pos != len(data):
            raise VMStateError(self.name, f"{len(data) - reader.pos} bytes after the footer")
        return header, Staged(state)

    def load_section(self, obj: Any, data: bytes) -> SectionHeader:
        header, staged = self.decode_section(obj, data)
        staged.apply()
        return header


class Subsection(NamedTuple):
    vmsd: VMStateDescription
    needed: Callable[[Any], bool]


# --- section framing ------------------------------------------------------------------


class SectionHeader(NamedTuple):
    section_id: int
    idstr: str
    instance_id: int
    version_id: int


def section_header(section_id: int, idstr: str, instance_id: int, version_id: int) -> bytes:
    name = idstr.encode()
    if not 0 < len(name) < 256:
        raise ValueError(f"section idstr {idstr!r} must be 1..255 bytes")
    return (bytes([QEMU_VM_SECTION_FULL]) + section_id.to_bytes(4, "big") + bytes([len(name)])
            + name + instance_id.to_bytes(4, "big") + version_id.to_bytes(4, "big"))


def section_footer(section_id: int) -> bytes:
    return bytes([QEMU_VM_SECTION_FOOTER]) + section_id.to_bytes(4, "big")


def parse_section_header(data: bytes, pos: int = 0) -> tuple[SectionHeader, int]:
    """Parse a FULL section header at `pos`; returns it and the payload's offset."""
    reader = _Reader(bytes(data), "stream", pos)
    kind = reader.take(1, "section type")[0]
    if kind != QEMU_VM_SECTION_FULL:
        raise VMStateError("stream", f"expected a full section (0x04) at offset {pos}, "
                           f"found {kind:#04x}")
    section_id = int.from_bytes(reader.take(4, "section id"), "big")
    length = reader.take(1, "idstr length")[0]
    idstr = reader.take(length, "idstr").decode("utf-8", "replace")
    instance_id = int.from_bytes(reader.take(4, "instance id"), "big")
    version_id = int.from_bytes(reader.take(4, "version id"), "big")
    return SectionHeader(section_id, idstr, instance_id, version_id), reader.pos


# --- staging --------------------------------------------------------------------------


class State:
    """Staged values for one object, keyed by attribute name; `target` is the live object.

    Hooks read and change staged values as attributes (`state.read_pos`).  Struct
    fields hold nested States (or lists of them), timers their deadline.
    """

    _vmsd: VMStateDescription
    _values: dict[str, Any]
    target: Any
    loaded_subsections: set[str]

    def __init__(self, vmsd: VMStateDescription, target: Any) -> None:
        object.__setattr__(self, "_vmsd", vmsd)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "loaded_subsections", set())

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._vmsd.name} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"{self._vmsd.name} has no field {name!r}")
        self._values[name] = value

    def values(self) -> dict[str, Any]:
        return dict(self._values)


class Staged:
    """A decoded, validated section waiting to be applied."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.applied = False

    def apply(self) -> None:
        if self.applied:
            raise RuntimeError("a staged section is applied once")
        self.applied = True
        _apply(self.state)


def _all_fields(vmsd: VMStateDescription) -> list[Field]:
    """The vmsd's fields and, recursively, its subsections' (they share the object)."""
    fields = [f for f in vmsd.fields if isinstance(f, Field) and not isinstance(f.kind, Unused)]
    for sub in vmsd.subsections:
        fields.extend(_all_fields(sub.vmsd))
    return fields


def _capture_value(f: Field, value: Any) -> Any:
    if isinstance(f.kind, VMStateDescription):
        return _capture(f.kind, value)
    if isinstance(f.kind, TimerKind):
        timer = cast("Timer", value)  # a clock.Timer (vmstate sits below the clock)
        return timer.expire_time if timer.pending else TIMER_NOT_PENDING
    if isinstance(f.kind, Buffer):
        return bytes(value)
    return value


def _capture(vmsd: VMStateDescription, obj: Any) -> State:
    """A State holding the object's current values of every described field."""
    state = State(vmsd, obj)
    for f in _all_fields(vmsd):
        current = getattr(obj, f.key)
        if f.is_array:
            state._values[f.key] = [_capture_value(f, v) for v in current]
        else:
            state._values[f.key] = _capture_value(f, current)
    return state


def _apply_value(f: Field, staged: Any, current: Any) -> Any:
    """Write one staged element; returns the value to store (or `current` if updated in place)."""
    if isinstance(f.kind, VMStateDescription):
        _apply(staged)
        return current
    if isinstance(f.kind, TimerKind):
        current = cast("Timer", current)
        if staged == TIMER_NOT_PENDING:
            current.cancel()
        else:  # QEMU's timer_mod takes int64 and clamps negative deadlines to 0
            signed = staged - (1 << 64) if staged >= 1 << 63 else staged
            current.modify(max(0, signed))
        return current
    return staged


def _apply(state: State) -> None:
    obj, vmsd = state.target, state._vmsd
    for f in _all_fields(vmsd):
        staged = state._values[f.key]
        if f.is_array:
            current = getattr(obj, f.key)
            for i, value in enumerate(staged):
                current[i] = _apply_value(f, value, current[i])
        else:
            new = _apply_value(f, staged, getattr(obj, f.key))
            setattr(obj, f.key, new)
    _run_loaded(vmsd, obj)


def _run_loaded(vmsd: VMStateDescription, obj: Any) -> None:
    for sub in vmsd.subsections:
        _run_loaded(sub.vmsd, obj)
    if vmsd.loaded is not None:
        vmsd.loaded(obj)


# --- encoding -------------------------------------------------------------------------


def _element_name(vmsd: VMStateDescription, index: int) -> str:
    """Field name for vmdesc: `name[k]` when the name occurs more than once in the vmsd."""
    f = vmsd.fields[index]
    same = [i for i, g in enumerate(vmsd.fields) if isinstance(g, Field) and g.name == f.name]
    return f"{f.name}[{same.index(index)}]" if len(same) > 1 else f.name


def _save(vmsd: VMStateDescription, obj: Any, out: bytearray,
          desc: dict[str, Any] | None) -> None:
    if vmsd.pre_save is not None:
        vmsd.pre_save(obj)
    fields_desc: list[dict[str, Any]] = []
    if desc is not None:
        desc.update({"vmsd_name": vmsd.name, "version": vmsd.version_id, "fields": fields_desc})
    for index, f in enumerate(vmsd.fields):
        if isinstance(f, Validate):
            continue
        if f.exists is not None and not f.exists(obj, vmsd.version_id):
            continue
        _save_field(vmsd, index, f, obj, out, fields_desc if desc is not None else None)
    subs_desc: list[dict[str, Any]] = []
    for sub in vmsd.subsections:
        if not sub.needed(obj):
            continue
        name = sub.vmsd.name.encode()
        out += bytes([QEMU_VM_SUBSECTION, len(name)]) + name
        out += sub.vmsd.version_id.to_bytes(4, "big")
        sub_desc: dict[str, Any] = {}
        _save(sub.vmsd, obj, out, sub_desc if desc is not None else None)
        subs_desc.append(sub_desc)
    if desc is not None and subs_desc:
        desc["subsections"] = subs_desc
    if vmsd.post_save is not None:
        vmsd.post_save(obj)


def _count(vmsd: VMStateDescription, f: Field, source: Any) -> int:
    if f.num is not None:
        return f.num
    if f.num_field is not None:
        return int(getattr(source, f.num_field))
    return 1


def _save_field(vmsd: VMStateDescription, index: int, f: Field, obj: Any, out: bytearray,
                fields_desc: list[dict[str, Any]] | None) -> None:
    count = _count(vmsd, f, obj)
    if isinstance(f.kind, Unused):
        elements: Sequence[Any] = [None] * count
    else:
        value = getattr(obj, f.key)
        elements = value[:count] if f.is_array else [value]
        if len(elements) < count:
            raise VMStateError(vmsd.name, f"array holds {len(elements)} elements, "
                               f"{count} are to be saved", f.name)
    name = _element_name(vmsd, index)
    compress = f.compressible()
    for i, element in enumerate(elements):
        start = len(out)
        entry: dict[str, Any] | None = None
        if fields_desc is not None and (i == 0 or not compress):
            entry = {"name": name}
            if count > 1:
                entry.update({"array_len": count} if compress else {"index": i})
            entry["type"] = f.type_name
            fields_desc.append(entry)
        kind = f.kind
        try:
            if isinstance(kind, VMStateDescription):
                struct_desc: dict[str, Any] | None = {} if entry is not None else None
                _save(kind, element, out, struct_desc)
                if entry is not None:
                    entry["struct"] = struct_desc
            elif isinstance(kind, TimerKind):
                timer = cast("Timer", element)
                deadline = timer.expire_time if timer.pending else TIMER_NOT_PENDING
                out += deadline.to_bytes(8, "big")
            elif isinstance(kind, Unused):
                out += bytes(kind.size)
            elif isinstance(kind, Buffer):
                if len(element) != kind.size:
                    raise ValueError(f"buffer holds {len(element)} bytes, not {kind.size}")
                out += bytes(element)
            else:
                out += kind.encode(element)
        except (ValueError, OverflowError) as e:
            where = f"{f.name}[{i}]" if f.is_array else f.name
            raise VMStateError(vmsd.name, f"cannot encode {element!r}: {e}", where) from None
        if entry is not None:
            entry["size"] = len(out) - start


# --- decoding -------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, section: str, pos: int = 0) -> None:
        self.data = data
        self.section = section
        self.pos = pos

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise VMStateError(self.section, f"stream ends at offset {len(self.data)} inside "
                               f"{n} bytes starting at {self.pos}", what)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def peek(self, n: int) -> bytes:
        return self.data[self.pos:self.pos + n]


def _load(vmsd: VMStateDescription, obj: Any, reader: _Reader, version_id: int,
          path: str) -> State:
    """Decode one vmsd instance into a fresh staging State for `obj`."""
    section = reader.section
    if version_id > vmsd.version_id:
        raise VMStateError(section, f"{vmsd.name} version {version_id} is newer than the "
                           f"supported {vmsd.version_id}")
    if version_id < vmsd.minimum_version_id:
        raise VMStateError(section, f"{vmsd.name} version {version_id} is older than the "
                           f"minimum {vmsd.minimum_version_id}")
    state = _capture(vmsd, obj)
    _load_into(vmsd, state, reader, version_id, path)
    return state


def _load_into(vmsd: VMStateDescription, state: State, reader: _Reader, version_id: int,
               path: str) -> None:
    section = reader.section
    if vmsd.pre_load is not None:
        vmsd.pre_load(state)
    for f in vmsd.fields:
        where = f"{path}.{f.name}" if path != section else f.name
        if isinstance(f, Validate):
            error = f.check(state)
            if error is not None:
                raise VMStateError(section, error, where)
            continue
        if f.version > version_id:
            continue
        if f.exists is not None and not f.exists(state, version_id):
            continue
        _load_field(f, state, reader, where)
    _load_subsections(vmsd, state, reader, path)
    if vmsd.post_load is not None:
        try:
            vmsd.post_load(state, version_id)
        except ValueError as e:
            raise VMStateError(section, str(e), None if path == section else path) from None


def _load_field(f: Field, state: State, reader: _Reader, where: str) -> None:
    kind = f.kind
    count = f.num if f.num is not None else 1
    if f.num_field is not None:
        count = int(state._values[f.num_field])
    if isinstance(kind, Unused):
        reader.take(kind.size * count, where)
        return
    staged = state._values[f.key]
    if f.is_array and count > len(staged):
        raise VMStateError(reader.section, f"the stream has {count} elements, the device "
                           f"holds {len(staged)}", where)
    for i in range(count):
        label = f"{where}[{i}]" if f.is_array else where
        if isinstance(kind, VMStateDescription):
            value: Any = staged[i] if f.is_array else staged
            _load_into(kind, value, reader, kind.version_id, label)
        elif isinstance(kind, TimerKind):
            value = int.from_bytes(reader.take(8, label), "big")
        elif isinstance(kind, Buffer):
            value = reader.take(kind.size, label)
        else:
            value = kind.decode(reader.take(kind.size, label))
        if f.is_array:
            staged[i] = value
        else:
            state._values[f.key] = value


def _load_subsections(vmsd: VMStateDescription, state: State, reader: _Reader,
                      path: str) -> None:
    """A4: consume subsections that belong to this vmsd; stop at the first that does not."""
    by_name = {sub.vmsd.name: sub.vmsd for sub in vmsd.subsections}
    while reader.peek(1) == bytes([QEMU_VM_SUBSECTION]):
        head = reader.peek(2)
        if len(head) < 2:
            break
        name_bytes = reader.peek(2 + head[1])[2:]
        if len(name_bytes) < head[1]:
            break
        name = name_bytes.decode("utf-8", "replace")
        if len(name) < len(vmsd.name) + 1 or not name.startswith(vmsd.name):
            break  # not ours: the enclosing vmsd may know it
        sub = by_name.get(name)
        if sub is None:
            raise VMStateError(reader.section, f"unknown subsection {name!r}")
        reader.take(2 + len(name_bytes), name)
        version = int.from_bytes(reader.take(4, f"{name} version"), "big")
        if version > sub.version_id:
            raise VMStateError(reader.section, f"{name} version {version} is newer than the "
                               f"supported {sub.version_id}")
        if version < sub.minimum_version_id:
            raise VMStateError(reader.section, f"{name} version {version} is older than the "
                               f"minimum {sub.minimum_version_id}")
        _load_into(sub, state, reader, version, path)
        state.loaded_subsections.add(name)
