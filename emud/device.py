"""Device base: a named piece of the board with an MMIO window and a reset."""

from __future__ import annotations


class Device:
    """Subclasses implement the MMIO handlers; `peek` must have no side effects."""

    name = "device"

    def reset(self) -> None:
        """Bring the device to its power-on state."""

    def read(self, offset: int, size: int) -> int:
        return self.peek(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        """Ignore writes unless the device says otherwise."""

    def peek(self, offset: int, size: int) -> int:
        return 0
