"""Device base: typed properties checked at realize, reset, MMIO, IRQ outputs, vmstate.

A device's life is QEMU's: create it (properties take their values), realize it
(properties are checked, derived state is built: a bad value is a clear
`DeviceError`), then reset it.  Its migration state is the class attribute
`vmstate` (emud.vmstate); `info()` gives the monitor a structured view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, cast, overload

from emud.vmstate import UINT32, UINT64, Field, Subsection, VMStateDescription

T = TypeVar("T")

_TRUE = ("on", "yes", "true", "1")
_FALSE = ("off", "no", "false", "0")


class DeviceError(Exception):
    """A device that cannot be built: bad property value, unknown property, ..."""


class Property(Generic[T]):
    """A typed device property, declared as a class attribute.

    `name` is the QEMU property name (`hpet-intcap`); the Python attribute may
    differ (`intcap`).  The value is checked at realize, against the type's range,
    `minimum`/`maximum`, and the optional `check` (returns an error or None).
    """

    def __init__(self, kind: type[T], default: T, *, name: str | None = None, bits: int = 0,
                 minimum: int | None = None, maximum: int | None = None,
                 check: Callable[[T], str | None] | None = None, doc: str = "") -> None:
        self.kind: type[T] = kind
        self.default: T = default
        self.name = name or ""
        self.attr = ""
        self.bits = bits
        self.minimum = minimum if minimum is not None else 0
        self.maximum = maximum if maximum is not None else (1 << bits) - 1
        self.check: Callable[[T], str | None] | None = check
        self.doc = doc

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr
        self.name = self.name or attr.replace("_", "-")

    @overload
    def __get__(self, obj: None, owner: type) -> Property[T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> Property[T] | T:
        if obj is None:
            return self
        value: T = obj.__dict__.get("_prop_" + self.attr, self.default)
        return value

    def __set__(self, obj: object, value: T) -> None:
        if getattr(obj, "realized", False):
            raise DeviceError(f"{getattr(obj, 'name', '?')}: property '{self.name}' cannot be "
                              "changed after realize")
        obj.__dict__["_prop_" + self.attr] = value

    @property
    def type_name(self) -> str:
        return "bool" if self.kind is bool else f"uint{self.bits}"

    def parse(self, text: str) -> T:
        """A value from text (command line, monitor): on/off, decimal or 0x-hex."""
        word = text.strip().lower()
        value: Any
        if self.kind is bool:
            if word not in _TRUE + _FALSE:
                raise ValueError(f"property '{self.name}' takes on/off, not {text!r}")
            value = word in _TRUE
            return cast(T, value)
        try:
            value = int(word, 0)
            return cast(T, value)
        except ValueError:
            raise ValueError(f"property '{self.name}' takes an integer, not {text!r}") from None

    def error(self, value: object) -> str | None:
        """Why `value` is not acceptable, or None."""
        if self.kind is bool:
            if not isinstance(value, bool):
                return f"must be on or off (a bool), got {value!r}"
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"must be an integer ({self.type_name}), got {value!r}"
            if not self.minimum <= value <= self.maximum:
                if (self.minimum, self.maximum) == (0, (1 << self.bits) - 1):
                    return f"must be a {self.type_name} (0..{self.maximum:#x}), got {value}"
                return f"must be in {self.minimum}..{self.maximum}, got {value}"
        if self.check is not None:
            return self.check(cast(T, value))
        return None


def prop_bool(default: bool, *, name: str | None = None, doc: str = "") -> Property[bool]:
    return Property(bool, default, name=name, doc=doc)


def prop_uint(bits: int, default: int, *, name: str | None = None, minimum: int | None = None,
              maximum: int | None = None, check: Callable[[int], str | None] | None = None,
              doc: str = "") -> Property[int]:
    return Property(int, default, name=name, bits=bits, minimum=minimum, maximum=maximum,
                    check=check, doc=doc)


class Device:
    """Subclasses implement the MMIO handlers; `peek` must have no side effects.

    Output lines are `IRQ` objects the device owns (by convention `irqs`); the
    board connects their sinks.  Trace points are module-level `emud.trace` events.
    """

    name: ClassVar[str] = "device"  # QEMU type name
    mmio_size: ClassVar[int] = 0  # length of the device's MMIO region
    vmstate: ClassVar[VMStateDescription | None] = None
    realized = False

    def __init__(self, **props: Any) -> None:
        for key, value in props.items():
            self.set_property(key, value)

    # --- properties -------------------------------------------------------------------

    @classmethod
    def properties(cls) -> list[Property[Any]]:
        found: dict[str, Property[Any]] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                if isinstance(value, Property):
                    found[value.attr] = value
        return list(found.values())

    @classmethod
    def find_property(cls, key: str) -> Property[Any]:
        for prop in cls.properties():
            if key in (prop.name, prop.attr):
                return prop
        known = ", ".join(p.name for p in cls.properties()) or "none"
        raise DeviceError(f"{cls.name}: no property '{key}' (properties: {known})")

    def set_property(self, key: str, value: Any) -> None:
        """Set by QEMU name or attribute name; text is parsed (`"on"`, `"0x104"`)."""
        prop = self.find_property(key)
        if isinstance(value, str):
            try:
                value = prop.parse(value)
            except ValueError as e:
                raise DeviceError(f"{self.name}: {e}") from None
        setattr(self, prop.attr, value)

    def property_values(self) -> dict[str, Any]:
        """Every property by its QEMU name (for a snapshot's configuration record)."""
        return {p.name: getattr(self, p.attr) for p in self.properties()}

    # --- life cycle -------------------------------------------------------------------

    def realize(self) -> None:
        """Check every property, build derived state (`do_realize`), then reset."""
        if self.realized:
            return
        for prop in self.properties():
            error = prop.error(getattr(self, prop.attr))
            if error is not None:
                raise DeviceError(f"{self.name}: property '{prop.name}' {error}")
        self.do_realize()
        self.realized = True
        self.reset()

    def do_realize(self) -> None:
        """Build what depends on property values (properties are valid here)."""

    def reset(self) -> None:
        """Bring the device to its power-on state."""

    # --- MMIO -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        return self.peek(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        """Ignore writes unless the device says otherwise."""

    def peek(self, offset: int, size: int) -> int:
        return 0

    # --- monitor ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Structured state for the monitor (`info <device>`)."""
        return {}


class ClockIn:
    """A clock input (QEMU's Clock): period in units of 2^-32 ns, 0 = stopped/unconnected."""

    PERIOD_1SEC = 10**9 << 32

    def __init__(self) -> None:
        self.period = 0
        self.multiplier = 1
        self.divider = 1

    @property
    def hz(self) -> int:
        return self.PERIOD_1SEC // self.period if self.period else 0


def _clock_pre_load(state: Any) -> None:
    # A stream without the muldiv subsection means 1/1 (QEMU's clock_pre_load).
    state.multiplier = 1
    state.divider = 1


VMSTATE_CLOCK_MULDIV = VMStateDescription(
    "clock/muldiv", 1, 1, [Field("multiplier", UINT32), Field("divider", UINT32)])

VMSTATE_CLOCK = VMStateDescription(
    "clock", 0, 0, [Field("period", UINT64)],
    subsections=[Subsection(VMSTATE_CLOCK_MULDIV,
                            lambda clk: clk.multiplier != 1 or clk.divider != 1)],
    pre_load=_clock_pre_load,
)
