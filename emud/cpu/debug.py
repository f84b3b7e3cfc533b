"""Debugger breakpoints and watchpoints as the hart sees them.

Both stop the hart *before* the instruction has any effect: a `DebugStop`
leaves the instruction like a Trap would, and the run loop then returns with
pc at that instruction and `hart.debug_stop` saying why.  Resuming runs that
instruction once without the checks, so a stop never repeats in place.

Watchpoints live in a `WatchpointIndex`: adding or removing one costs what it
covers (never what the others cover), and an access looks only at the
watchpoints of its own page, so gdb's remove-all/insert-all around every
resume stays linear however many watchpoints there are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

BREAK = "break"
# Watchpoint kinds, named as in gdb's stop replies.
WATCH, RWATCH, AWATCH = "watch", "rwatch", "awatch"

INDEX_SHIFT = 12  # the index's page size; any access the hart checks stays inside one
WIDE_PAGES = 16  # a watchpoint over more pages than this is checked on every access


class DebugStop(Exception):
    """Raised by a breakpoint's op or a watched access; `pc` is filled in by the run loop."""

    def __init__(self, kind: str, addr: int) -> None:
        super().__init__(kind, addr)
        self.kind = kind
        self.addr = addr  # the breakpoint's pc, or the first watched byte accessed
        self.pc = 0


class Watchpoint(NamedTuple):
    addr: int
    length: int
    kind: str  # WATCH (stores), RWATCH (loads) or AWATCH (both)

    @property
    def reads(self) -> bool:
        return self.kind != WATCH

    @property
    def writes(self) -> bool:
        return self.kind != RWATCH

    def hits(self, addr: int, size: int, write: bool) -> bool:
        return ((self.writes if write else self.reads)
                and addr < self.addr + self.length and self.addr < addr + size)

    def pages(self) -> range:
        """The index pages it covers (it is never empty)."""
        return range(self.addr >> INDEX_SHIFT, ((self.addr + self.length - 1) >> INDEX_SHIFT) + 1)


class WatchpointIndex:
    """A set of distinct watchpoints, by page.  When several match one access, the one
    added first is reported, so the stop does not depend on how the index is laid out."""

    def __init__(self) -> None:
        # dicts as insertion-ordered sets: O(1) removal
        self._by_page: dict[int, dict[Watchpoint, None]] = {}
        self._wide: dict[Watchpoint, None] = {}
        self._order: dict[Watchpoint, int] = {}
        self._serial = itertools.count()
        self.readers = 0  # how many watch loads: while any does, loads test FLAG_LOAD

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Watchpoint]:
        return iter(self._order)

    def __contains__(self, w: object) -> bool:
        return w in self._order

    def add(self, w: Watchpoint) -> bool:
        """False if it is already there."""
        if w in self._order:
            return False
        self._order[w] = next(self._serial)
        pages = w.pages()
        if len(pages) > WIDE_PAGES:
            self._wide[w] = None
        else:
            for page in pages:
                self._by_page.setdefault(page, {})[w] = None
        self.readers += w.reads
        return True

    def remove(self, w: Watchpoint) -> bool:
        """False if it is not there."""
        if self._order.pop(w, None) is None:
            return False
        pages = w.pages()
        if len(pages) > WIDE_PAGES:
            del self._wide[w]
        else:
            for page in pages:
                on_page = self._by_page[page]
                del on_page[w]
                if not on_page:
                    del self._by_page[page]
        self.readers -= w.reads
        return True

    def overlapping(self, addr: int, length: int) -> list[Watchpoint]:
        """The watchpoints overlapping [addr, addr+length), found through the pages it
        covers (or the pages watched, if fewer): what one of them covers, not all."""
        first, last = addr >> INDEX_SHIFT, (addr + length - 1) >> INDEX_SHIFT
        pages = (range(first, last + 1) if last - first < len(self._by_page)
                 else [p for p in self._by_page if first <= p <= last])
        found = dict.fromkeys(w for p in pages for w in self._by_page.get(p, ()))
        found.update(self._wide)
        return [w for w in found if w.addr < addr + length and addr < w.addr + w.length]

    def check(self, addr: int, size: int, write: bool) -> None:
        """Raise DebugStop if the access [addr, addr+size) (inside one page) is watched."""
        hit: Watchpoint | None = None
        for candidates in (self._by_page.get(addr >> INDEX_SHIFT, ()), self._wide):
            for w in candidates:
                if w.hits(addr, size, write) and (hit is None
                                                  or self._order[w] < self._order[hit]):
                    hit = w
        if hit is not None:
            raise DebugStop(hit.kind, max(addr, hit.addr))
