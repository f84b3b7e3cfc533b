"""The snapshot store: one SQLite file per VM.

A snapshot row holds its metadata, the configuration record (JSON) and the
device sections (CPU, clock and devices, each as its vmstate bytes).  RAM is
kept as content-addressed, LZ4-compressed 4 KiB pages shared by every
snapshot; a snapshot refers to its pages through a page table of digests
(an all-zero digest stands for a page of zeros, which is never stored).

Every stored record carries a digest of its content, so a snapshot damaged on
disk is refused with an error naming the damaged part instead of being loaded.
Every save is one transaction, so a crash (even kill -9) in the middle of
one leaves the store as it was before.  Saving over an existing tag inserts
the new snapshot and removes the old one in that same transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.block

PAGE_SIZE = 4096
DIGEST_SIZE = 16
ZERO_DIGEST = bytes(DIGEST_SIZE)
_ZERO_PAGE = bytes(PAGE_SIZE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL UNIQUE,
    date REAL NOT NULL,
    vm_clock_ns INTEGER NOT NULL,
    icount INTEGER,
    vm_size INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    config TEXT NOT NULL,
    page_table BLOB NOT NULL,
    digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sections (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    instance_id INTEGER NOT NULL,
    version_id INTEGER NOT NULL,
    data BLOB NOT NULL,
    digest BLOB NOT NULL,
    PRIMARY KEY (snapshot_id, seq)
);
CREATE TABLE IF NOT EXISTS pages (
    digest BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
"""


# A snapshot row as `_row`, `_info` and `load` read it (by position).
_COLUMNS = ("id, tag, date, vm_clock_ns, icount, vm_size, stored_bytes, config, page_table, "
            "digest")


class StoreError(Exception):
    """A snapshot cannot be found, read or written; the message says which and why."""


@dataclass(frozen=True)
class Section:
    name: str
    instance_id: int
    version_id: int
    data: bytes


@dataclass
class SnapshotData:
    """Everything a snapshot holds, independent of how it is stored."""

    config: dict[str, Any]
    sections: list[Section]
    ram: bytes | bytearray
    vm_clock_ns: int
    icount: int | None


@dataclass(frozen=True)
class SnapshotInfo:
    id: int
    tag: str
    date: float
    vm_clock_ns: int
    icount: int | None
    vm_size: int  # state plus non-zero RAM, uncompressed
    stored_bytes: int  # what this snapshot added to the store when it was saved
    ram_pages: int = 0
    shared_pages: int = 0  # non-zero pages also referenced by another snapshot
    config: dict[str, Any] = field(default_factory=dict)


def page_digest(page: bytes | memoryview) -> bytes:
    return hashlib.blake2b(page, digest_size=DIGEST_SIZE).digest()


def default_store_path(image_digest: str) -> Path:
    """$XDG_STATE_HOME/emud/snapshots/<image digest prefix>.sqlite."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "emud" / "snapshots" / f"{image_digest[:16]}.sqlite"


class SnapshotStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open snapshot store {self.path}: {e}") from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- save -------------------------------------------------------------------

    def save(self, tag: str, snap: SnapshotData) -> SnapshotInfo:
        """Store `snap` under `tag`, replacing any snapshot with that tag atomically."""
        if not tag or tag.isdigit():
            raise StoreError(f"invalid snapshot tag {tag!r}: a tag must not be empty or numeric")
        ram = memoryview(snap.ram)  # may be the live RAM: saving is synchronous
        if len(ram) % PAGE_SIZE:
            raise StoreError("RAM size is not a whole number of pages")
        table = bytearray()
        fresh: dict[bytes, bytes] = {}
        nonzero = 0
        for offset in range(0, len(ram), PAGE_SIZE):
            page = bytes(ram[offset : offset + PAGE_SIZE])
            if page == _ZERO_PAGE:
                table += ZERO_DIGEST
                continue
            nonzero += 1
            digest = page_digest(page)
            table += digest
            fresh.setdefault(digest, page)
        try:
            with self._transaction() as db:
                known = self._known_digests(db, list(fresh))
                new_pages = [(d, _pack(p)) for d, p in fresh.items() if d not in known]
                db.executemany("INSERT INTO pages (digest, data) VALUES (?, ?)", new_pages)
                state_bytes = sum(len(s.data) for s in snap.sections)
                packed_table = zlib.compress(bytes(table), 1)
                stored = state_bytes + len(packed_table) + sum(len(data) for _, data in new_pages)
                replaced = db.execute("DELETE FROM snapshots WHERE tag = ?", (tag,)).rowcount
                config = json.dumps(snap.config, sort_keys=True)
                cursor = db.execute(
                    "INSERT INTO snapshots (tag, date, vm_clock_ns, icount, vm_size, stored_bytes,"
                    " config, page_table, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (tag, time.time(), snap.vm_clock_ns, snap.icount,
                     state_bytes + nonzero * PAGE_SIZE, stored, config, packed_table,
                     _record_digest(snap.vm_clock_ns, snap.icount, config, packed_table)),
                )
                snapshot_id = cursor.lastrowid
                assert snapshot_id is not None
                db.executemany(
                    "INSERT INTO sections (snapshot_id, seq, name, instance_id, version_id, data,"
                    " digest) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(snapshot_id, seq, s.name, s.instance_id, s.version_id, s.data,
                      _section_digest(s)) for seq, s in enumerate(snap.sections)],
                )
                if replaced:
                    self._collect_garbage(db)
        except sqlite3.Error as e:
            raise StoreError(f"cannot save snapshot {tag!r}: {e}") from None
        return SnapshotInfo(
            id=snapshot_id, tag=tag, date=time.time(), vm_clock_ns=snap.vm_clock_ns,
            icount=snap.icount, vm_size=state_bytes + nonzero * PAGE_SIZE, stored_bytes=stored,
            ram_pages=nonzero, shared_pages=len(fresh) - len(new_pages), config=snap.config)

    @staticmethod
    def _known_digests(db: sqlite3.Connection, digests: list[bytes]) -> set[bytes]:
        known: set[bytes] = set()
        for start in range(0, len(digests), 500):
            chunk = digests[start : start + 500]
            marks = ",".join("?" * len(chunk))
            known.update(row[0] for row in
                         db.execute(f"SELECT digest FROM pages WHERE digest IN ({marks})", chunk))
        return known

    @staticmethod
    def _referenced(db: sqlite3.Connection) -> dict[bytes, int]:
        counts: dict[bytes, int] = {}
        for (packed,) in db.execute("SELECT page_table FROM snapshots"):
            for digest in set(_digests(_unpack_table(packed))):
                counts[digest] = counts.get(digest, 0) + 1
        counts.pop(ZERO_DIGEST, None)
        return counts

    def _collect_garbage(self, db: sqlite3.Connection) -> None:
        """Drop pages no snapshot refers to any more (after delete or overwrite)."""
        referenced = self._referenced(db)
        stale = [(d,) for (d,) in db.execute("SELECT digest FROM pages") if d not in referenced]
        db.executemany("DELETE FROM pages WHERE digest = ?", stale)

    # --- query, load, delete -------------------------------------------------------

    def _row(self, tag_or_id: str) -> sqlite3.Row | tuple[Any, ...]:
        row = self.db.execute(
            f"SELECT {_COLUMNS} FROM snapshots"
            " WHERE tag = ? OR (CAST(id AS TEXT) = ? AND ? GLOB '[0-9]*')",
            (tag_or_id, tag_or_id, tag_or_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"Snapshot '{tag_or_id}' does not exist")
        return row  # type: ignore[no-any-return]

    def info(self, tag: str) -> SnapshotInfo:
        return self._info(self._row(tag), self._referenced(self.db))

    def snapshots(self) -> list[SnapshotInfo]:
        referenced = self._referenced(self.db)
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM snapshots ORDER BY id"
        ).fetchall()
        return [self._info(row, referenced) for row in rows]

    @staticmethod
    def _info(row: Any, referenced: dict[bytes, int]) -> SnapshotInfo:
        table = _unpack_table(row[8])
        digests = set(_digests(table)) - {ZERO_DIGEST}
        return SnapshotInfo(
            id=row[0], tag=row[1], date=row[2], vm_clock_ns=row[3], icount=row[4],
            vm_size=row[5], stored_bytes=row[6],
            ram_pages=sum(1 for d in _digests(table) if d != ZERO_DIGEST),
            shared_pages=sum(1 for d in digests if referenced.get(d, 0) > 1),
            config=json.loads(row[7]),
        )

    def load(self, tag: str) -> SnapshotData:
        """Read and verify a snapshot completely (page digests included)."""
        row = self._row(tag)
        snapshot_id, real_tag = row[0], row[1]
        if _record_digest(row[3], row[4], row[7], row[8]) != row[9]:
            raise StoreError(f"snapshot '{real_tag}': its record (configuration, clock or page "
                             "table) is corrupt")
        try:
            sections = []
            for name, instance, version, data, digest in self.db.execute(
                    "SELECT name, instance_id, version_id, data, digest FROM sections"
                    " WHERE snapshot_id = ? ORDER BY seq", (snapshot_id,)):
                section = Section(name, instance, version, bytes(data))
                if _section_digest(section) != digest:
                    raise StoreError(f"snapshot '{real_tag}': section '{name}' is corrupt")
                sections.append(section)
            table = _unpack_table(row[8])
            if len(table) % DIGEST_SIZE:
                raise StoreError(f"snapshot '{real_tag}': page table is corrupt")
            needed = set(_digests(table)) - {ZERO_DIGEST}
            pages: dict[bytes, bytes] = {}
            for digest in needed:
                found = self.db.execute("SELECT data FROM pages WHERE digest = ?",
                                        (digest,)).fetchone()
                if found is None:
                    raise StoreError(f"snapshot '{real_tag}': RAM page {digest.hex()} is missing")
                try:
                    page = _unpack(found[0])
                except lz4.block.LZ4BlockError:
                    raise StoreError(f"snapshot '{real_tag}': RAM page {digest.hex()} is corrupt"
                                     ) from None
                if len(page) != PAGE_SIZE or page_digest(page) != digest:
                    raise StoreError(f"snapshot '{real_tag}': RAM page {digest.hex()} is corrupt "
                                     "(it does not match its digest)")
                pages[digest] = page
            ram = bytearray(len(table) // DIGEST_SIZE * PAGE_SIZE)
            for index, digest in enumerate(_digests(table)):
                if digest != ZERO_DIGEST:
                    ram[index * PAGE_SIZE : (index + 1) * PAGE_SIZE] = pages[digest]
            config = json.loads(row[7])
        except sqlite3.Error as e:
            raise StoreError(f"cannot read snapshot '{real_tag}': {e}") from None
        except json.JSONDecodeError:
            raise StoreError(f"snapshot '{real_tag}': configuration record is corrupt") from None
        return SnapshotData(config, sections, ram, row[3], row[4])

    def delete(self, tag: str) -> None:
        row = self._row(tag)
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
                self._collect_garbage(db)
        except sqlite3.Error as e:
            raise StoreError(f"cannot delete snapshot '{tag}': {e}") from None

    def tags(self) -> list[str]:
        return [tag for (tag,) in self.db.execute("SELECT tag FROM snapshots ORDER BY id")]


def _record_digest(vm_clock_ns: int, icount: int | None, config: str, table: bytes) -> bytes:
    meta = f"{vm_clock_ns}:{icount}:{config}".encode()
    return hashlib.blake2b(meta + b"\0" + table, digest_size=DIGEST_SIZE).digest()


def _section_digest(s: Section) -> bytes:
    head = f"{s.name}:{s.instance_id}:{s.version_id}".encode()
    return hashlib.blake2b(head + b"\0" + s.data, digest_size=DIGEST_SIZE).digest()


def _pack(page: bytes) -> bytes:
    """LZ4: fast enough that compressing RAM pages costs little (zlib was 40x slower)."""
    return bytes(lz4.block.compress(page, store_size=False))


def _unpack(data: bytes) -> bytes:
    return bytes(lz4.block.decompress(data, uncompressed_size=PAGE_SIZE))


def _unpack_table(packed: bytes) -> bytes:
    try:
        return zlib.decompress(packed)
    except zlib.error:
        raise StoreError("a snapshot's RAM page table is corrupt") from None


def _digests(table: bytes) -> Iterator[bytes]:
    for offset in range(0, len(table), DIGEST_SIZE):
        yield table[offset : offset + DIGEST_SIZE]
