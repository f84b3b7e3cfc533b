"""Interrupt lines: a named wire from a device output to a sink."""

from __future__ import annotations

from collections.abc import Callable


class IRQ:
    """One level-triggered line.  `set` forwards every change to the sink."""

    def __init__(self, name: str, sink: Callable[[bool], None] | None = None) -> None:
        self.name = name
        self.sink = sink
        self.level = False

    def set(self, level: bool) -> None:
        level = bool(level)
        changed = level != self.level
        self.level = level
        if changed and self.sink is not None:
            self.sink(level)

    def raise_(self) -> None:
        self.set(True)

    def lower(self) -> None:
        self.set(False)

    def pulse(self) -> None:
        self.set(True)
        self.set(False)
