"""Physical memory protection as pure functions: decode the CSRs, decide an access.

A hart keeps sixteen pmpcfg bytes and sixteen pmpaddr words; `regions` turns
them into address ranges once per write, and `allowed` decides one access
against those ranges.  Addresses are taken as the spec has them: pmpaddr
holds bits 33..2 of a 34-bit physical address, so a range may reach past
2**32 (our bus simply ends there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

ENTRIES = 16
R, W, X, L = 1 << 0, 1 << 1, 1 << 2, 1 << 7
A_SHIFT = 3
OFF, TOR, NA4, NAPOT = 0, 1, 2, 3
# The bits a pmpcfg byte keeps: bits 5 and 6 are reserved and read as zero.
CFG_WRITABLE = R | W | X | (3 << A_SHIFT) | L


class Region(NamedTuple):
    lo: int  # first byte
    hi: int  # one past the last byte
    perms: int  # R | W | X
    locked: bool


def mode(cfg: int) -> int:
    return cfg >> A_SHIFT & 3


def napot_range(addr: int) -> tuple[int, int]:
    """The [lo, hi) of a NAPOT pmpaddr: its trailing ones give the size, 8 << ones."""
    ones = (~addr & (addr + 1)).bit_length() - 1  # index of the lowest zero bit
    size = 8 << ones
    lo = (addr << 2) & ~(size - 1)
    return lo, lo + size


def region(cfg: Sequence[int], addr: Sequence[int], i: int) -> Region | None:
    """Entry i as a range, None when it matches nothing (OFF, or an empty TOR)."""
    c = cfg[i]
    match mode(c):
        case 0:
            return None
        case 1:
            lo, hi = (addr[i - 1] << 2 if i else 0), addr[i] << 2
            if lo >= hi:
                return None
        case 2:
            lo, hi = addr[i] << 2, (addr[i] << 2) + 4
        case _:
            lo, hi = napot_range(addr[i])
    return Region(lo, hi, c & (R | W | X), bool(c & L))


def regions(cfg: Sequence[int], addr: Sequence[int]) -> tuple[Region, ...]:
    """The active entries, in priority order (lowest index first)."""
    return tuple(r for i in range(ENTRIES) if (r := region(cfg, addr, i)) is not None)


def any_locked(cfg: Sequence[int]) -> bool:
    return any(c & L for c in cfg)


def allowed(rules: Sequence[Region], addr: int, size: int, access: int, machine: bool) -> bool:
    """Whether an access of `size` bytes at `addr` needing `access` (R, W or X) passes.

    The first entry that holds any byte of the access decides: it must hold all
    of them, and grant the access unless it is unlocked and the hart is in
    M-mode.  With no such entry, M-mode passes and U-mode fails (entries exist).
    """
    end = addr + size
    for r in rules:
        if r.lo < end and addr < r.hi:
            if addr < r.lo or end > r.hi:
                return False  # matches only some of the bytes
            return (machine and not r.locked) or bool(r.perms & access)
    return machine


def cfg_write(cfg: Sequence[int], index: int, value: int) -> list[int]:
    """pmpcfg<index> (four entries) written with value: locked entries keep their byte."""
    new = list(cfg)
    for k in range(4):
        i = 4 * index + k
        if not cfg[i] & L:
            new[i] = value >> (8 * k) & CFG_WRITABLE
    return new


def addr_writable(cfg: Sequence[int], i: int) -> bool:
    """pmpaddr<i> is frozen by its own lock, and by a locked TOR entry above it (whose
    bottom it is)."""
    if cfg[i] & L:
        return False
    return not (i + 1 < ENTRIES and cfg[i + 1] & L and mode(cfg[i + 1]) == TOR)


def cfg_word(cfg: Sequence[int], index: int) -> int:
    return int.from_bytes(bytes(cfg[4 * index : 4 * index + 4]), "little")
