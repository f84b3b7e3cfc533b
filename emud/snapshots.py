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

import errno
import hashlib
import json
import os
import sqlite3
import stat
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lz4.block

if TYPE_CHECKING:
    from mmap import mmap

from emud.hostfiles import (
    FILE_MODE,
    UnsafePathError,
    check_private_dir,
    ensure_private_dir,
    open_private,
    restrict,
)

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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
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
    ram: bytes | bytearray | mmap  # an mmap: the live RAM capture(copy_ram=False) lends
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


def state_dir() -> Path:
    """$XDG_STATE_HOME/emud (default ~/.local/state/emud)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "emud"


def default_store_path(image_digest: str) -> Path:
    """$XDG_STATE_HOME/emud/snapshots/<image digest prefix>.sqlite."""
    return state_dir() / "snapshots" / f"{image_digest[:16]}.sqlite"


def default_export_dir() -> Path:
    """$XDG_STATE_HOME/emud/exports: where snapshot export/import work by default."""
    return state_dir() / "exports"


MAX_NAME_BYTES = 255  # a tag or a file name: one path component on every file system


def check_text(what: str, text: str) -> str:
    """A tag or a file name that SQLite and the file system can take, or a clear error."""
    try:
        encoded = text.encode()
    except UnicodeEncodeError:
        raise StoreError(f"invalid {what} {text!r}: not valid Unicode (a lone surrogate)"
                         ) from None
    if "\0" in text:
        raise StoreError(f"invalid {what} {text!r}: it contains a NUL byte")
    if len(encoded) > MAX_NAME_BYTES:
        raise StoreError(f"invalid {what}: longer than {MAX_NAME_BYTES} bytes")
    if not text.isprintable():
        raise StoreError(f"invalid {what} {text!r}: it contains control characters")
    return text


def check_tag(tag: str) -> str:
    check_text("snapshot tag", tag)
    if not tag or tag.isdigit():
        raise StoreError(f"invalid snapshot tag {tag!r}: a tag must not be empty or numeric")
    return tag


class ExportDir:
    """The one directory `snapshot export`/`import` may touch, and how they touch it.

    Names are single components (no `/`, no `..`) opened relative to a descriptor
    of the directory with O_NOFOLLOW, so neither a symlink nor a path can lead
    elsewhere; only regular files are read or written (O_NONBLOCK: a FIFO cannot
    freeze the daemon); an existing file is replaced only when asked; a read is
    bounded.  The default directory is created private (0700); a directory given
    at start must exist and be private already (it is checked at every use, so
    it cannot be swapped for another one).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.explicit = path is not None
        self.path = Path(path) if path is not None else default_export_dir()

    def check(self) -> None:
        """Refuse an unusable directory now (the CLI calls it at start for an explicit one)."""
        os.close(self._open_dir())

    def _open_dir(self) -> int:
        try:
            if self.explicit:
                check_private_dir(self.path)
            else:
                ensure_private_dir(self.path)
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except UnsafePathError as e:
            raise StoreError(f"export directory: {e}") from None
        except OSError as e:
            raise StoreError(f"export directory {self.path}: {e.strerror}") from None

    @staticmethod
    def check_name(name: str) -> str:
        check_text("file name", name)
        if not name or "/" in name or name in (".", ".."):
            raise StoreError(f"invalid file name {name!r}: give a name inside the export "
                             "directory (no '/', not '.' or '..')")
        return name

    def _open(self, name: str, flags: int) -> tuple[int, os.stat_result]:
        self.check_name(name)
        dir_fd = self._open_dir()
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, FILE_MODE,
                         dir_fd=dir_fd)
        except OSError as e:
            reasons = {errno.ELOOP: "it is a symbolic link",
                       errno.EEXIST: "it already exists (export with overwrite to replace it)",
                       errno.ENXIO: "not a regular file"}
            reason = reasons.get(e.errno or 0) or e.strerror
            raise StoreError(f"cannot open '{name}' in {self.path}: {reason}") from None
        finally:
            os.close(dir_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise StoreError(f"cannot open '{name}' in {self.path}: not a regular file")
        return fd, st

    def write(self, name: str, data: bytes, *, overwrite: bool = False,
              protect: tuple[Path, ...] = ()) -> Path:
        """Write `data` to `name`; `protect` lists files it must never be (the live store)."""
        flags = os.O_WRONLY | os.O_CREAT | (0 if overwrite else os.O_EXCL)
        fd, st = self._open(name, flags)  # no O_TRUNC: look at the file before emptying it
        try:
            for path in protect:
                try:
                    other = os.stat(path)
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    raise StoreError(f"refusing to export onto {path}: it is the live "
                                     "snapshot store")
            restrict(fd)
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            raise StoreError(f"cannot write '{name}' in {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)
        return self.path / name

    def read(self, name: str, limit: int) -> bytes:
        """The contents of `name`, refused (unread) when larger than `limit` bytes."""
        fd, st = self._open(name, os.O_RDONLY)
        try:
            if st.st_size > limit:
                raise StoreError(f"'{name}' is {st.st_size} bytes, more than the {limit} a "
                                 "stream for this machine's RAM can hold")
            chunks = []
            left = limit + 1  # the file may grow after fstat: never read more than allowed
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as e:
            raise StoreError(f"cannot read '{name}' in {self.path}: {e.strerror}") from None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > limit:
            raise StoreError(f"'{name}' is more than the {limit} bytes a stream for this "
                             "machine's RAM can hold")
        return data


# What SQLite raises on a damaged file: its own errors, and a message (a damaged schema
# quoted in it) that is not valid UTF-8.
DB_ERRORS = (sqlite3.Error, UnicodeDecodeError)

# What the write-ahead log may keep between transactions.  It is checkpointed and
# truncated after every write and at every open (a crash leaves the WAL of the killed
# save behind), so it never holds more than one transaction's pages.
WAL_KEEP_BYTES = 1 << 20


class SnapshotStore:
    """The store in one SQLite file.  It creates only that file (and SQLite's -wal and
    -shm beside it, which SQLite gives the database file's mode): 0600, never through
    a symbolic link; its directory must exist."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))
            for suffix in ("-wal", "-shm"):  # left by an older emud with the umask's mode
                _make_private(Path(f"{self.path}{suffix}"))
            self.db = sqlite3.connect(self.path, isolation_level=None)
            # Damaged text must not raise on every read: U+FFFD makes it fail its digest.
            self.db.text_factory = lambda raw: raw.decode(errors="replace")
        except OSError as e:
            reason = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise StoreError(f"cannot open snapshot store {self.path}: {reason}") from None
        except DB_ERRORS as e:
            raise StoreError(f"cannot open snapshot store {self.path}: {e}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self.checkpoint()
        except DB_ERRORS as e:
            self.db.close()
            raise StoreError(f"cannot open snapshot store {self.path}: {e}") from None

    def close(self) -> None:
        self.db.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (a no-op while another
        process reads: that one's own checkpoint finishes the job)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """SQLite errors on a read name the store and what was being read."""
        try:
            yield
        except DB_ERRORS as e:
            raise StoreError(f"snapshot store {self.path} is damaged: cannot read {what} ({e})"
                             ) from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self.checkpoint()

    # --- save -------------------------------------------------------------------

    def save(self, tag: str, snap: SnapshotData) -> SnapshotInfo:
        """Store `snap` under `tag`, replacing any snapshot with that tag atomically."""
        check_tag(tag)
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
        except DB_ERRORS as e:
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
        for snapshot_id, tag, packed in db.execute("SELECT id, tag, page_table FROM snapshots"):
            for digest in set(_digests(_unpack_table(packed, _name(tag, snapshot_id)))):
                counts[digest] = counts.get(digest, 0) + 1
        counts.pop(ZERO_DIGEST, None)
        return counts

    def _collect_garbage(self, db: sqlite3.Connection) -> None:
        """Drop pages no snapshot refers to any more (after delete or overwrite).

        With a damaged page table somewhere nothing is dropped: which pages that
        snapshot needs is unknown, and keeping a page too many costs only space."""
        try:
            referenced = self._referenced(db)
        except StoreError:
            return
        stale = [(d,) for (d,) in db.execute("SELECT digest FROM pages") if d not in referenced]
        db.executemany("DELETE FROM pages WHERE digest = ?", stale)

    # --- query, load, delete -------------------------------------------------------

    def _row(self, tag_or_id: str, *, check: bool = True) -> tuple[Any, ...]:
        check_text("snapshot tag", tag_or_id)
        with self._reading(f"snapshot '{tag_or_id}'"):
            row = self.db.execute(
                f"SELECT {_COLUMNS} FROM snapshots"
                " WHERE tag = ? OR (CAST(id AS TEXT) = ? AND ? GLOB '[0-9]*')",
                (tag_or_id, tag_or_id, tag_or_id),
            ).fetchone()
        if row is None:
            raise StoreError(f"Snapshot '{tag_or_id}' does not exist")
        return _checked_row(row) if check else tuple(row)

    def info(self, tag: str) -> SnapshotInfo:
        row = self._row(tag)
        with self._reading("the page tables"):
            return self._info(row, self._referenced(self.db))

    def snapshots(self) -> list[SnapshotInfo]:
        with self._reading("the snapshot list"):
            rows = self.db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id").fetchall()
            checked = [_checked_row(row) for row in rows]
            referenced = self._referenced(self.db)
        return [self._info(row, referenced) for row in checked]

    @staticmethod
    def _info(row: tuple[Any, ...], referenced: dict[bytes, int]) -> SnapshotInfo:
        table = _unpack_table(row[8], _name(row[1], row[0]))
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
            for seq, name, instance, version, data, digest in self.db.execute(
                    "SELECT seq, name, instance_id, version_id, data, digest FROM sections"
                    " WHERE snapshot_id = ? ORDER BY seq", (snapshot_id,)):
                if not (isinstance(name, str) and isinstance(instance, int)
                        and isinstance(version, int) and isinstance(data, bytes)):
                    raise StoreError(f"snapshot '{real_tag}': section row {seq} is corrupt")
                section = Section(name, instance, version, data)
                if _section_digest(section) != digest:
                    raise StoreError(f"snapshot '{real_tag}': section '{name}' is corrupt")
                sections.append(section)
            table = _unpack_table(row[8], f"snapshot '{real_tag}'")
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
                except (lz4.block.LZ4BlockError, TypeError, ValueError):
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
        except DB_ERRORS as e:
            raise StoreError(f"snapshot store {self.path} is damaged: cannot read snapshot "
                             f"'{real_tag}' ({e})") from None
        return SnapshotData(config, sections, ram, row[3], row[4])

    def delete(self, tag: str) -> None:
        row = self._row(tag, check=False)  # a damaged record can still be deleted
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM snapshots WHERE id = ?", (row[0],))
                self._collect_garbage(db)
        except DB_ERRORS as e:
            raise StoreError(f"cannot delete snapshot '{tag}': {e}") from None

    def set_meta(self, values: dict[str, str]) -> None:
        """What the store is for (the image's path and digest), for `find_elsewhere`."""
        try:
            with self._transaction() as db:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               list(values.items()))
        except DB_ERRORS as e:
            raise StoreError(f"cannot write snapshot store {self.path}: {e}") from None

    def tags(self) -> list[str]:
        with self._reading("the snapshot list"):
            return [tag for (tag,) in self.db.execute("SELECT tag FROM snapshots ORDER BY id")
                    if isinstance(tag, str)]


@dataclass(frozen=True)
class Elsewhere:
    """A snapshot with the tag asked for, in the store of another build of the image."""

    store: Path
    image_sha256: str
    date: float


def find_elsewhere(directory: Path, image_path: str, tag: str, exclude: Path) -> list[Elsewhere]:
    """Snapshots tagged `tag` in the other stores of `directory` whose meta names
    `image_path`: the default stores of earlier builds of the same file, newest first.

    Every store records the image it was opened for, so these stores together are the
    index from an image's path to its builds' stores.  Stores that cannot be read
    are passed over: this only adds a hint to an error.
    """
    found = []
    for path in sorted(directory.glob("*.sqlite")):
        if path == exclude:
            continue
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except DB_ERRORS:
            continue
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("image_path") != image_path:
                continue
            row = db.execute("SELECT date FROM snapshots WHERE tag = ?", (tag,)).fetchone()
            if row is not None and isinstance(row[0], float | int):
                found.append(Elsewhere(path, str(meta.get("image_sha256")), float(row[0])))
        except DB_ERRORS:
            continue
        finally:
            db.close()
    return sorted(found, key=lambda e: -e.date)


def _make_private(path: Path) -> None:
    """Take group and other access away from an existing file of the user's."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, FILE_MODE)


def _name(tag: Any, snapshot_id: Any) -> str:
    return f"snapshot '{tag}' (ID {snapshot_id})" if isinstance(tag, str) else \
        f"snapshot ID {snapshot_id}"


# Types of a snapshot row's columns, in _COLUMNS order (icount may be NULL).
_ROW_TYPES: tuple[tuple[type, ...], ...] = (
    (int,), (str,), (float, int), (int,), (int, type(None)), (int,), (int,), (str,), (bytes,),
    (bytes,))


def _checked_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A snapshot row whose columns have their types and whose configuration is a JSON
    object, or a StoreError naming the damaged record."""
    name = _name(row[1], row[0])
    for column, value, types in zip(_COLUMNS.split(", "), row, _ROW_TYPES, strict=True):
        if not isinstance(value, types):
            raise StoreError(f"{name}: its record is damaged ({column})")
    for column, value, limit in (("date", row[2], 1 << 40), ("vm_clock_ns", row[3], 1 << 64),
                                 ("icount", row[4] or 0, 1 << 64), ("vm_size", row[5], 1 << 48),
                                 ("stored_bytes", row[6], 1 << 48)):
        # Out of range for a date, a u64 or a store's size (NaN fails too).
        if not 0 <= value < limit:
            raise StoreError(f"{name}: its record is damaged ({column})")
    try:
        config = json.loads(row[7])
    except (json.JSONDecodeError, RecursionError):
        config = None
    if not isinstance(config, dict):
        raise StoreError(f"{name}: its record is damaged (config)")
    return row


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


def _unpack_table(packed: Any, name: str) -> bytes:
    try:
        table = zlib.decompress(packed)
    except (zlib.error, TypeError):
        raise StoreError(f"{name}: its RAM page table is corrupt") from None
    if len(table) % DIGEST_SIZE:
        raise StoreError(f"{name}: its RAM page table is corrupt")
    return table


def _digests(table: bytes) -> Iterator[bytes]:
    for offset in range(0, len(table), DIGEST_SIZE):
        yield table[offset : offset + DIGEST_SIZE]
