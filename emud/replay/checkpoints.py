"""In-memory checkpoints of one branch of history, under a memory budget.

A checkpoint is the migration capture (every vmstate section) plus RAM as a
list of page digests into a shared, reference-counted page store, plus the
input each serial port held for the guest.  Only pages that changed since the
previous checkpoint are hashed: a reference copy of RAM at the last checkpoint
finds them with one comparison per page (~5 ms for 16 MiB), where hashing all
of RAM would cost several times more.

The ring keeps the first checkpoint (the start of history) and the newest, and
thins the others so that their spacing grows with their age: the one whose
removal leaves the smallest gap relative to its distance from the newest goes
first.  A reverse step near the present is then cheap, and one far back costs
more but stays possible.  Over budget, the start of history moves forward.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from emud import migration
from emud.machine import Machine
from emud.memory import PAGE_SHIFT
from emud.snapshots import Section, SnapshotData

PAGE = 1 << PAGE_SHIFT
MAX_CHECKPOINTS = 512  # besides the budget: keeps thinning and lookups cheap
SECTION_OVERHEAD = 64  # bytes counted per section besides its data


def _digest(page: bytes | bytearray) -> bytes:
    return hashlib.blake2b(page, digest_size=16).digest()


@dataclass
class Checkpoint:
    icount: int
    now_ns: int
    events: int  # how many events of the log had been delivered
    config: dict[str, object]
    sections: list[Section]
    pages: list[bytes]  # digests, one per RAM page
    held: list[bytes]  # each serial port's held input
    exit_code: int | None  # how the guest ended, if it has (not guest state: no section)
    size: int  # bytes it alone accounts for (its sections)


class CheckpointRing:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.items: list[Checkpoint] = []  # by icount
        self._pages: dict[bytes, bytes] = {}
        self._refs: dict[bytes, int] = {}
        self._ref: bytes = b""  # RAM as of `_ref_pages`
        self._ref_pages: list[bytes] = []

    # --- accounting -------------------------------------------------------------------

    @property
    def page_bytes(self) -> int:
        return len(self._pages) * PAGE

    @property
    def memory(self) -> int:
        """What the checkpoints hold: shared pages, sections, and the reference copy."""
        return self.page_bytes + sum(c.size for c in self.items) + len(self._ref)

    def clear(self) -> None:
        self.items.clear()
        self._pages.clear()
        self._refs.clear()
        self._ref, self._ref_pages = b"", []

    # --- taking and restoring -----------------------------------------------------------

    def _page_list(self, ram: bytearray) -> list[bytes]:
        ref, pages = self._ref, self._ref_pages
        if len(ref) != len(ram):
            return [_digest(ram[i : i + PAGE]) for i in range(0, len(ram), PAGE)]
        out = list(pages)
        for n, i in enumerate(range(0, len(ram), PAGE)):
            if ram[i : i + PAGE] != ref[i : i + PAGE]:
                out[n] = _digest(ram[i : i + PAGE])
        return out

    def take(self, machine: Machine, events: int, *, keep: bool = False) -> Checkpoint:
        """Checkpoint the present; `keep` spares it from the thinning this triggers."""
        ram = machine.ram.data
        snap = migration.capture(machine, copy_ram=False)
        pages = self._page_list(ram)
        for n, digest in enumerate(pages):
            if digest not in self._refs:
                self._pages[digest] = bytes(ram[n * PAGE : (n + 1) * PAGE])
                self._refs[digest] = 0
            self._refs[digest] += 1
        self._ref, self._ref_pages = bytes(ram), pages
        size = sum(len(s.data) + SECTION_OVERHEAD for s in snap.sections) + len(pages) * 16
        cp = Checkpoint(machine.clock.icount, machine.clock.now_ns, events, snap.config,
                        snap.sections, pages, [s.held for s in machine.input_ports],
                        machine.exit_code, size)
        self._insert(cp, keep)
        return cp

    def _insert(self, cp: Checkpoint, keep: bool) -> None:
        items = self.items
        i = len(items)
        while i and (items[i - 1].icount, items[i - 1].events) > (cp.icount, cp.events):
            i -= 1
        if i and (items[i - 1].icount, items[i - 1].events) == (cp.icount, cp.events):
            self._drop(i - 1)  # the same point again: keep the newer capture only
            i -= 1
        items.insert(i, cp)
        self._thin(cp if keep else None)

    def restore(self, machine: Machine, cp: Checkpoint) -> None:
        ram = b"".join(self._pages[d] for d in cp.pages)
        snap = SnapshotData(dict(cp.config), list(cp.sections), ram, cp.now_ns, cp.icount)
        migration.restore(machine, snap)
        for serial, held in zip(machine.input_ports, cp.held, strict=False):
            serial.held = held
        machine.hart.debug_stop = None
        machine.exit_code = cp.exit_code  # a checkpoint after power-off stays powered off
        self._ref, self._ref_pages = ram, list(cp.pages)

    def before(self, icount: int, events: int | None = None) -> Checkpoint | None:
        """The latest checkpoint at or before `icount` (and at most `events` delivered)."""
        best = None
        for cp in self.items:
            if cp.icount > icount or (cp.icount == icount and events is not None
                                      and cp.events > events):
                break
            best = cp
        return best

    # --- thinning -----------------------------------------------------------------------

    def _drop(self, index: int) -> None:
        cp = self.items.pop(index)
        for digest in cp.pages:
            self._refs[digest] -= 1
            if not self._refs[digest]:
                del self._refs[digest]
                del self._pages[digest]

    def _thin(self, keep: Checkpoint | None) -> None:
        items = self.items
        while len(items) > MAX_CHECKPOINTS or (self.memory > self.budget and len(items) > 1):
            if len(items) <= 2:
                self._drop(0)  # over budget with two: history starts later
                continue
            head = items[-1].icount
            worst, best_cost = 1, float("inf")
            for i in range(1, len(items) - 1):
                if items[i] is keep:
                    continue
                gap = items[i + 1].icount - items[i - 1].icount
                cost = gap / (head - items[i].icount + 1)
                if cost < best_cost:
                    worst, best_cost = i, cost
            if self.memory > self.budget and best_cost > 0.5:
                self._drop(0)  # thinning would leave big holes: give up the oldest past
            else:
                self._drop(worst)
