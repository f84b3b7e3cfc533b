"""The public device API: one lifecycle, properties, IRQ lines, vmstate, info, statistics.

A device's life is QEMU's, the same for every device, built in or plug-in:

1. **create**: `Dev(**props)` or `Dev()` then `set_property(name, text_or_value)`;
   nothing else happens (no clock, no bus, no lines yet).
2. **realize**: `realize(ctx)` checks every property (a bad value is a clear
   `DeviceError` naming the device), then `do_realize(ctx)` builds what depends on
   them and takes what the device needs from the machine out of `ctx` (a
   `DeviceContext`: the virtual clock, a DMA store on the system bus, its serial
   backend, the machine's power/reset controls).  A device never imports the
   machine.  Its IRQ lines exist after realize.
3. **reset**: `realize` ends with a first `reset()`; the machine resets every device
   on a system reset.

What a device declares (class attributes, all optional):

- `name`: the type name (`pl011`), what `-device` and a board line use;
  an instance has an `id` (`uart0`) given by the board, the type name by default.
- `mmio_size`: the length of its MMIO window (0: no window); `read`/`write`/`peek`.
- `output_lines()` / `input_lines()`: its IRQ lines by name (`irq`, `10`); the board connects
  `"uart0.irq -> plic.10"`.  `irq_outputs` is how many outputs, in order, a board
  slot's `irq = N` (or `-device ...,irq=N`) wires to interrupt controller inputs
  N, N+1, ...
- properties: `prop_bool` / `prop_uint` class attributes (typed, with defaults, docs).
- `vmstate` (emud.vmstate) and `migrate_order`: sections are saved and applied by
  (`migrate_order`, board position); interrupt controllers use `MIGRATE_LATE` so they
  are loaded after their sources.
- `wants_serial`: the device takes the next `-serial` backend (serial0, serial1...).
- trace points: module-level `emud.trace.event(...)`; list them in `trace_events`
  so `-device TYPE,help` shows them.
- `info()`: typed, structured state (QMP `x-emud-query-<type>`), rendered for HMP
  (`info <id>`) by `render_info`; `interrupt_stats()`: QEMU's
  InterruptStatsProvider (`info irq`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, overload

from emud.irq import IRQ
from emud.vmstate import UINT32, UINT64, Field, Subsection, VMStateDescription

if TYPE_CHECKING:
    from emud.chardev import CharBackend
    from emud.clock import VirtualClock
    from emud.trace import TraceEvent

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


MIGRATE_EARLY = -10  # before the devices (what their state is relative to)
MIGRATE_DEFAULT = 0
MIGRATE_LATE = 10  # after the devices: interrupt controllers, whose lines they drive


def _no_dma(addr: int, value: int, size: int) -> None:
    """A DMA store with no bus behind it is dropped (as QEMU drops one that hits nothing)."""


def _no_poweroff(code: int) -> None:
    raise DeviceError("this device has no machine to power off")


def _no_reset() -> None:
    raise DeviceError("this device has no machine to reset")


# What the monitor adds to a device's info() (its place on the board), for render_info.
BOARD_FACTS = ("id", "type", "base", "plic-source", "chardev")


class DeviceContext:
    """What the machine hands a device at realize; a device never imports the machine.

    `dma_write(addr, value, size)` stores on the system bus as a bus master would
    (a store that hits nothing is dropped); `serial` is the device's character
    backend when it `wants_serial`; `poweroff(code)` / `request_reset()` end or
    restart the run; `set_time_source(fn)` gives the hart its `time` CSR;
    `guest_error(text)` reports a guest misbehaviour (a bad register access) and
    `unimp(text)` a feature the model lacks, in the `-d guest_errors` / `-d unimp`
    logs; the device keeps its context as `self.ctx`.  A device used alone (tests)
    gets `DeviceContext(clock)`.
    """

    def __init__(self, clock: VirtualClock | None = None,
                 dma_write: Callable[[int, int, int], None] = _no_dma,
                 serial: CharBackend | None = None,
                 poweroff: Callable[[int], None] = _no_poweroff,
                 request_reset: Callable[[], None] = _no_reset,
                 set_time_source: Callable[[Callable[[], int]], None] = lambda fn: None,
                 guest_error: Callable[[str], None] = lambda text: None,
                 unimp: Callable[[str], None] = lambda text: None) -> None:
        # A plain class (no dataclass): a plain run imports this module and builds five.
        self.clock = clock
        self.dma_write = dma_write
        self.serial = serial
        self.poweroff = poweroff
        self.request_reset = request_reset
        self.set_time_source = set_time_source
        self.guest_error = guest_error
        self.unimp = unimp

    def need_clock(self, device: Device) -> VirtualClock:
        if self.clock is None:
            raise DeviceError(f"{device.id}: needs a clock")
        return self.clock


class Device:
    """The base of every device; subclasses implement the MMIO handlers.

    `peek` must have no side effects (the debugger and the monitor use it).
    See the module docstring for the lifecycle and what a device declares.
    """

    name: ClassVar[str] = "device"  # type name (QEMU's), used by -device and the board
    description: ClassVar[str] = ""  # one line for `-device help`
    mmio_size: ClassVar[int] = 0  # length of the device's MMIO region
    vmstate: ClassVar[VMStateDescription | None] = None
    migrate_order: ClassVar[int] = MIGRATE_DEFAULT
    irq_outputs: ClassVar[int] = 1  # outputs `irq = N` wires, in order, from N on
    wants_serial: ClassVar[bool] = False
    trace_events: ClassVar[tuple[TraceEvent, ...]] = ()
    # A guest read changes no state (it may log): the interpreter reads it inside a batch
    # of instructions, with the clock exact, instead of ending the batch.  Set for a
    # device whose `read` is its `peek`; another says so itself.
    quiet_reads: ClassVar[bool] = True
    realized = False
    ctx: DeviceContext  # set by realize

    def __init__(self, **props: Any) -> None:
        self.id: str = self.name
        for key, value in props.items():
            self.set_property(key, value)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "quiet_reads" not in cls.__dict__:
            cls.quiet_reads = cls.read is Device.read

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"

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

    def realize(self, ctx: DeviceContext | None = None) -> None:
        """Check every property, build derived state (`do_realize`), then reset."""
        if self.realized:
            return
        for prop in self.properties():
            error = prop.error(getattr(self, prop.attr))
            if error is not None:
                raise DeviceError(f"{self.id}: property '{prop.name}' {error}")
        self.ctx = ctx or DeviceContext()
        self.do_realize(self.ctx)
        self.realized = True
        self.reset()

    def do_realize(self, ctx: DeviceContext) -> None:
        """Build what depends on property values (properties are valid here); take
        from `ctx` what the device needs.  Raise DeviceError for what cannot work."""

    def reset(self) -> None:
        """Bring the device to its power-on state."""

    # --- interrupt lines --------------------------------------------------------------

    def output_lines(self) -> dict[str, IRQ]:
        """The device's output lines by name, in order (the board sets their sinks)."""
        return {}

    def input_lines(self) -> dict[str, IRQ]:
        """The device's input lines by name (a board output drives one with `set`)."""
        return {}

    def interrupt_stats(self) -> list[int] | None:
        """Rising edges seen per input line (QEMU's InterruptStatsProvider), or None."""
        return None

    # --- MMIO -------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        return self.peek(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        """Ignore writes unless the device says otherwise."""

    def peek(self, offset: int, size: int) -> int:
        return 0

    # --- monitor ----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Structured state for the monitor (`info <id>`, QMP `x-emud-query-<type>`)."""
        return {}

    @classmethod
    def render_info(cls, data: dict[str, Any]) -> str:
        """The HMP text of `info <id>`: `data` is `info()` plus the board's facts
        (BOARD_FACTS).  Default: a header line, then one `key: value` line each."""
        base = data.get("base")
        where = f" @ 0x{base:016x}" if isinstance(base, int) else ""
        irq = data.get("plic-source")
        header = f"{data.get('id')} ({data.get('type')}){where}" + (
            f", PLIC source {irq}" if irq is not None else "")
        return "\n".join([header, *(f"  {key}: {value}" for key, value in data.items()
                                    if key not in BOARD_FACTS)])

    @classmethod
    def has_info(cls) -> bool:
        """Whether the device renders an `info` of its own."""
        return cls.info is not Device.info


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
