"""The address space's control-plane write, shared by gdb, the monitor and replay."""

from __future__ import annotations

import pytest

from emud.memory import AddressSpace, BusError, Ram, Region


class Registers:
    """A device that records every access it sees."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        self.writes.append((offset, value, size))

    def peek(self, offset: int, size: int) -> int:
        return 0


def bus() -> tuple[AddressSpace, Registers]:
    space = AddressSpace(Ram(0x8000_0000, 0x1000))
    dev = Registers()
    space.add(Region("dev", 0x1000_0000, 0x100, dev))
    return space, dev


@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_register_sized_write_is_one_device_access(size: int) -> None:
    space, dev = bus()
    space.debug_write(0x1000_0010, bytes(range(1, size + 1)))
    assert dev.writes == [(0x10, int.from_bytes(bytes(range(1, size + 1)), "little"), size)]


def test_a_longer_write_is_word_stores_where_aligned_and_bytes_elsewhere() -> None:
    space, dev = bus()
    space.debug_write(0x1000_0003, bytes(range(1, 10)))
    assert dev.writes == [(3, 1, 1), (4, 0x05040302, 4), (8, 0x09080706, 4)]


def test_ram_is_written_directly_and_nothing_answering_is_a_bus_error() -> None:
    space, dev = bus()
    space.debug_write(0x8000_0100, b"\x01\x02\x03")
    assert space.read_bytes(0x8000_0100, 3) == b"\x01\x02\x03" and dev.writes == []
    with pytest.raises(BusError):
        space.debug_write(0x2000_0000, b"\x00")
