"""Named trace events, enabled by glob, printed in QEMU's log-backend format.

Devices declare their events at import time with QEMU's names and messages
(`hw/timer/trace-events`, `hw/char/trace-events`), so `--trace 'hpet_*'` shows
the same lines QEMU prints with `-trace 'hpet_*'`:

    hpet_ram_read enter hpet_ram_readl at 0x10

An event is one attribute test when disabled, cheap enough for every MMIO access.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable

Sink = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


_sink: Sink = _stderr
_events: dict[str, TraceEvent] = {}


class TraceEvent:
    """One event: `fmt` is a Python %-format of the event's arguments (QEMU's message)."""

    __slots__ = ("name", "fmt", "enabled")

    def __init__(self, name: str, fmt: str) -> None:
        self.name = name
        self.fmt = fmt
        self.enabled = False

    def __call__(self, *args: object) -> None:
        if self.enabled:
            _sink(f"{self.name} {self.fmt % args}" if self.fmt else self.name)

    def __repr__(self) -> str:
        return f"<trace {self.name} {'on' if self.enabled else 'off'}>"


def event(name: str, fmt: str = "") -> TraceEvent:
    """Declare an event (once per name; a module reloaded in tests gets the same object)."""
    existing = _events.get(name)
    if existing is not None:
        existing.fmt = fmt
        return existing
    ev = _events[name] = TraceEvent(name, fmt)
    return ev


def events(pattern: str = "*") -> list[TraceEvent]:
    """Events whose name matches the glob, sorted by name."""
    return [_events[n] for n in sorted(_events) if fnmatch.fnmatchcase(n, pattern)]


def set_state(pattern: str, enabled: bool) -> list[str]:
    """Enable or disable every event matching the glob; returns the names it matched."""
    matched = events(pattern)
    for ev in matched:
        ev.enabled = enabled
    return [ev.name for ev in matched]


def enable(spec: str) -> list[str]:
    """Apply one QEMU-style `-trace` argument: `PATTERN`, `enable=PATTERN` or `-PATTERN`.

    Raises ValueError when nothing matches, so a typo does not silently trace nothing.
    """
    pattern = spec.removeprefix("enable=")
    on = not pattern.startswith("-")
    pattern = pattern.removeprefix("-")
    names = set_state(pattern, on)
    if not names:
        raise ValueError(f"no trace event matches {pattern!r} (see --trace help)")
    return names


def disable_all() -> None:
    for ev in _events.values():
        ev.enabled = False


def set_sink(sink: Sink | None) -> Sink:
    """Send trace lines to `sink` (None: back to stderr); returns the previous sink."""
    global _sink
    previous = _sink
    _sink = sink if sink is not None else _stderr
    return previous
