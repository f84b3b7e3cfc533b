"""The physical address space: one RAM block and MMIO windows of devices.

The CPU reaches RAM directly through typed memoryviews (its fast path) and
everything else through `AddressSpace.read`/`write`.  Debugger and monitor
accesses go through `peek`/`poke`, which never have device side effects.
"""

from __future__ import annotations

import bisect
import mmap
from collections.abc import Callable
from typing import NamedTuple, Protocol

PAGE_SHIFT = 12  # RAM comes in 4 KiB pages (its size; dirty tracking by checkpoints)

# Flags per RAM granule in `Ram.flags`: a store to a flagged granule, and while the hart
# watches loads a load from a FLAG_LOAD granule, leaves the fast path.  16 bytes: an
# aligned access (the only kind the fast paths make) never spans two granules, an
# instruction spans at most two, and code and data rarely share one (sections are
# aligned), so a store next to code pays nothing; the flags cost 1/16 of RAM (1 MiB
# for 16 MiB), where one per 4-byte word would cost a quarter and still mix code and
# data in compressed code.
FLAG_SHIFT = 4
GRANULE = 1 << FLAG_SHIFT
FLAG_CODE = 1  # holds decoded or translated instructions: a store must invalidate them
FLAG_WATCH = 2  # a store watcher (HTIF tohost) covers it
FLAG_DEBUG = 4  # a write watchpoint or store trigger covers it (checked before the store)
FLAG_LOAD = 8  # a read watchpoint or load trigger covers it (checked before the load)


class BusError(Exception):
    """An access to an address no region claims."""

    def __init__(self, addr: int) -> None:
        super().__init__(f"no device or memory at {addr:#010x}")
        self.addr = addr


class Mmio(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, value: int, size: int) -> None: ...
    def peek(self, offset: int, size: int) -> int: ...


class Region(NamedTuple):
    name: str
    base: int
    size: int
    device: Mmio | None  # None for RAM

    @property
    def end(self) -> int:
        return self.base + self.size


StoreWatcher = Callable[[int, int, int], None]  # (addr, value, size), after the store


class RamBuffer(mmap.mmap):
    """RAM's bytes: an anonymous private mapping, whose pages are zero until touched, that
    compares by content as the bytearray it replaced did (an mmap compares by identity)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, bytes | bytearray | memoryview | mmap.mmap):
            return NotImplemented
        with memoryview(self) as mine, memoryview(other) as theirs:
            return mine == theirs

    __hash__ = None  # type: ignore[assignment]  # mutable, as a bytearray


class Ram:
    def __init__(self, base: int, size: int) -> None:
        if size <= 0 or size % (1 << PAGE_SHIFT):
            raise ValueError("RAM size must be a positive multiple of 4 KiB")
        self.base = base
        self.size = size
        # Anonymous memory, not a bytearray: its pages are zero until first touched, so a
        # machine (16M by default) is built and cleared without writing all of its RAM;
        # a short run touches a few pages (emud run's start-up, bench/startup.py).
        self.data = RamBuffer(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.u8 = memoryview(self.data)
        self.s8 = self.u8.cast("b")
        self.u16 = self.u8.cast("H")
        self.s16 = self.u8.cast("h")
        self.u32 = self.u8.cast("I")
        self.flags = bytearray(size >> FLAG_SHIFT)

    def contains(self, addr: int, length: int = 1) -> bool:
        return self.base <= addr and addr + length <= self.base + self.size

    def clear(self) -> None:
        """Every byte zero again; the kernel drops the pages instead of us writing them."""
        self.data.madvise(mmap.MADV_DONTNEED)

    def granules(self, addr: int, length: int) -> range:
        """The granules [addr, addr+length) touches, clipped to RAM (empty outside)."""
        lo = max(addr, self.base) - self.base
        hi = min(addr + length, self.base + self.size) - self.base
        return range(lo >> FLAG_SHIFT, ((hi - 1) >> FLAG_SHIFT) + 1 if hi > lo else 0)

    def set_flags(self, granules: range, bits: int) -> None:
        """Set `bits` on a range of granules (at C speed: ranges can be all of RAM)."""
        lo, hi = granules.start, granules.stop
        if lo < hi:
            self.flags[lo:hi] = self.flags[lo:hi].translate(_SET[bits])

    def flagged(self, granules: range, bits: int) -> bool:
        """Whether any of the granules has one of `bits`."""
        lo, hi = granules.start, granules.stop
        return self.flags[lo:hi].translate(_CLEAR[0xF & ~bits]).count(0) < hi - lo

    def clear_flags(self, granules: range, bits: int) -> None:
        lo, hi = granules.start, granules.stop
        if lo < hi:
            self.flags[lo:hi] = self.flags[lo:hi].translate(_CLEAR[bits])


_SET = [bytes([f | bits for f in range(256)]) for bits in range(16)]
_CLEAR = [bytes([f & ~bits for f in range(256)]) for bits in range(16)]


class AddressSpace:
    def __init__(self, ram: Ram) -> None:
        self.ram = ram
        self.regions: list[Region] = []
        self._bases: list[int] = []
        self._watchers: list[tuple[int, int, StoreWatcher]] = []
        # A store or debugger write over a FLAG_CODE granule: (addr, size) it wrote.
        self.on_code_write: Callable[[int, int], None] = lambda addr, size: None
        # A device handler that raises (a plug-in's bug) is told here; the access is a
        # bus error for the guest, and the daemon runs on.
        self.on_device_error: Callable[[Mmio, str], None] = lambda device, text: None
        self.add(Region("ram", ram.base, ram.size, None))

    def add(self, region: Region) -> None:
        i = bisect.bisect(self._bases, region.base)
        before = self.regions[i - 1] if i else None
        after = self.regions[i] if i < len(self.regions) else None
        if (before and before.end > region.base) or (after and region.end > after.base):
            raise ValueError(f"region {region.name} overlaps another")
        self.regions.insert(i, region)
        self._bases.insert(i, region.base)

    def find(self, addr: int) -> Region | None:
        i = bisect.bisect(self._bases, addr) - 1
        if i >= 0 and addr < self.regions[i].end:
            return self.regions[i]
        return None

    def quiet_read(self, addr: int) -> bool:
        """Whether a guest read at addr changes no state: a device that says its reads
        do not (`quiet_reads`)."""
        region = self.find(addr)
        return region is not None and bool(getattr(region.device, "quiet_reads", False))

    def _mmio(self, addr: int, size: int) -> tuple[Mmio, int]:
        region = self.find(addr)
        if region is None or region.device is None or addr + size > region.end:
            raise BusError(addr)
        return region.device, addr - region.base

    # --- guest accesses (side effects allowed) ---------------------------------

    def read(self, addr: int, size: int) -> int:
        if self.ram.contains(addr, size):
            return int.from_bytes(self.ram.data[addr - self.ram.base : addr - self.ram.base + size],
                                  "little")
        device, offset = self._mmio(addr, size)
        try:
            return device.read(offset, size) & ((1 << (8 * size)) - 1)
        except BusError:
            raise
        except Exception as e:
            self._failed(device, f"read at {addr:#x} ({size} bytes)", e)
            raise BusError(addr) from None

    def write(self, addr: int, value: int, size: int) -> None:
        if self.ram.contains(addr, size):
            self.store_ram(addr, value, size)
            return
        device, offset = self._mmio(addr, size)
        try:
            device.write(offset, value & ((1 << (8 * size)) - 1), size)
        except BusError:
            raise
        except Exception as e:
            self._failed(device, f"write of {value:#x} at {addr:#x} ({size} bytes)", e)
            raise BusError(addr) from None

    def _failed(self, device: Mmio, access: str, error: Exception) -> None:
        self.on_device_error(device, f"{access} raised {type(error).__name__}: {error}")

    def store_ram(self, addr: int, value: int, size: int) -> None:
        """A RAM store that honours the granule flags (code invalidation, watchers)."""
        ram = self.ram
        offset = addr - ram.base
        value &= (1 << (8 * size)) - 1
        ram.data[offset : offset + size] = value.to_bytes(size, "little")
        self._after_ram_write(addr, size, value)

    def _after_ram_write(self, addr: int, size: int, value: int) -> None:
        flags = self.ram.flags
        bits = 0
        for granule in self.ram.granules(addr, size):
            bits |= flags[granule]
        if bits & FLAG_CODE:
            self.on_code_write(addr, size)
        if bits & FLAG_WATCH:
            for lo, hi, watcher in self._watchers:
                if addr < hi and lo < addr + size:
                    watcher(addr, value, size)

    def watch_stores(self, addr: int, length: int, watcher: StoreWatcher) -> None:
        """Call `watcher` after every guest store overlapping [addr, addr+length) in RAM."""
        if not self.ram.contains(addr, length):
            raise ValueError(f"{addr:#x} is not in RAM")
        self._watchers.append((addr, addr + length, watcher))
        self.ram.set_flags(self.ram.granules(addr, length), FLAG_WATCH)

    # --- debugger / monitor / loader accesses (no device side effects) ----------

    def peek(self, addr: int, size: int) -> int:
        if self.ram.contains(addr, size):
            return self.read(addr, size)
        device, offset = self._mmio(addr, size)
        try:
            return device.peek(offset, size) & ((1 << (8 * size)) - 1)
        except BusError:
            raise
        except Exception as e:
            self._failed(device, f"peek at {addr:#x} ({size} bytes)", e)
            raise BusError(addr) from None

    def read_bytes(self, addr: int, length: int) -> bytes:
        """Side-effect-free read of a range; RAM fast, devices by 32-bit peeks."""
        if self.ram.contains(addr, length):
            offset = addr - self.ram.base
            return bytes(self.ram.data[offset : offset + length])
        out = bytearray()
        for a in range(addr, addr + length):
            out.append(self.peek(a & ~3, 4) >> (8 * (a & 3)) & 0xFF)
        return bytes(out)

    def write_bytes(self, addr: int, data: bytes) -> None:
        """Debugger/loader write to RAM; keeps decoded code coherent."""
        if not self.ram.contains(addr, len(data)):
            raise BusError(addr)
        offset = addr - self.ram.base
        self.ram.data[offset : offset + len(data)] = data
        if self.ram.flagged(self.ram.granules(addr, len(data)), FLAG_CODE):
            self.on_code_write(addr, len(data))

    def debug_write(self, addr: int, data: bytes) -> None:
        """A control plane's write (gdb, the monitor, a replayed input): RAM directly;
        device registers as real stores, side effects and all (`set *reg = v`): one
        access when `data` is 1, 2 or 4 bytes, else word stores where aligned and byte
        stores elsewhere.  Raises BusError where nothing answers."""
        if self.ram.contains(addr, len(data)):
            self.write_bytes(addr, data)
            return
        if len(data) in (1, 2, 4):
            self.write(addr, int.from_bytes(data, "little"), len(data))
            return
        i = 0
        while i < len(data):
            size = 4 if not (addr + i) & 3 and len(data) - i >= 4 else 1
            self.write(addr + i, int.from_bytes(data[i : i + size], "little"), size)
            i += size

    def mtree(self) -> str:
        """`info mtree`-style listing of the system address space."""
        lines = ["address-space: memory",
                 "  0000000000000000-ffffffffffffffff (prio 0, i/o): system"]
        for r in self.regions:
            kind = "ram" if r.device is None else "i/o"
            lines.append(f"    {r.base:016x}-{r.end - 1:016x} (prio 0, {kind}): {r.name}")
        return "\n".join(lines)
