"""The address space: the control-plane write shared by gdb, the monitor and replay, and
the per-granule flags that send stores (code, watchers) to the slow path."""

from __future__ import annotations

import pytest

from emud.memory import FLAG_CODE, FLAG_WATCH, AddressSpace, BusError, Ram, Region


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


def test_store_watchers_flag_exactly_their_granules() -> None:
    space, _ = bus()
    seen: list[tuple[int, int, int]] = []
    space.watch_stores(0x8000_0114, 8, lambda addr, value, size: seen.append((addr, value, size)))
    assert [g for g, f in enumerate(space.ram.flags) if f] == [0x11]  # 16-byte granules
    assert space.ram.flags[0x11] == FLAG_WATCH
    space.store_ram(0x8000_0110, 1, 4)  # the same granule, not the watched bytes
    space.store_ram(0x8000_0118, 2, 4)
    assert seen == [(0x8000_0118, 2, 4)]


def test_writes_over_code_granules_report_the_bytes_written() -> None:
    space, _ = bus()
    written: list[tuple[int, int]] = []
    space.on_code_write = lambda addr, size: written.append((addr, size))
    space.ram.flags[0x20] |= FLAG_CODE  # 0x80000200..0x8000020f holds code
    space.write_bytes(0x8000_01F0, bytes(16))  # the granule before: no code
    space.store_ram(0x8000_0210, 5, 4)  # the granule after
    assert written == []
    space.write_bytes(0x8000_01FE, bytes(4))
    space.store_ram(0x8000_020C, 5, 2)
    assert written == [(0x8000_01FE, 4), (0x8000_020C, 2)]


def test_granule_flags_are_set_and_cleared_over_ranges() -> None:
    ram = Ram(0x8000_0000, 0x1000)
    span = ram.granules(0x7FFF_FFF0, 0x40)  # clipped to RAM
    assert span == range(0, 3)
    ram.set_flags(span, FLAG_CODE | FLAG_WATCH)
    assert ram.flagged(range(2, 4), FLAG_WATCH) and not ram.flagged(range(3, 8), FLAG_CODE)
    ram.clear_flags(range(0, 256), FLAG_CODE)
    assert list(ram.flags[:4]) == [FLAG_WATCH] * 3 + [0]
    assert not ram.granules(0x9000_0000, 4)  # outside RAM: nothing
