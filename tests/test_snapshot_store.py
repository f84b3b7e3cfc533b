"""The SQLite snapshot store: sharing, atomic overwrite, verification, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from emud.snapshots import PAGE_SIZE, Section, SnapshotData, SnapshotStore, StoreError


def snapshot(ram: bytes, clock: int = 1000) -> SnapshotData:
    return SnapshotData({"machine": "emud-virt", "ram_size": len(ram)},
                        [Section("cpu", 0, 1, b"\x01\x02"), Section("pl011", 0, 2, b"\x00" * 8)],
                        ram, clock, clock // 2)


def ram_with(*pages: tuple[int, int], size: int = 64 * PAGE_SIZE) -> bytes:
    ram = bytearray(size)
    for index, fill in pages:
        ram[index * PAGE_SIZE : (index + 1) * PAGE_SIZE] = bytes([fill]) * PAGE_SIZE
    return bytes(ram)


def test_roundtrip_and_page_sharing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s.sqlite")
    first = store.save("one", snapshot(ram_with((0, 1), (5, 2), (6, 2))))
    second = store.save("two", snapshot(ram_with((0, 1), (5, 2), (6, 3)), clock=2000))
    assert (first.id, second.id) == (1, 2)
    assert first.ram_pages == 3 and second.shared_pages == 2
    assert second.stored_bytes < first.stored_bytes
    loaded = store.load("two")
    assert loaded.ram == ram_with((0, 1), (5, 2), (6, 3))
    assert loaded.sections[1] == Section("pl011", 0, 2, b"\x00" * 8)
    assert (loaded.vm_clock_ns, loaded.icount) == (2000, 1000)
    assert store.load("1").ram == ram_with((0, 1), (5, 2), (6, 2))  # by ID, like QEMU


def test_overwrite_replaces_the_tag_and_frees_pages(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s.sqlite")
    store.save("t", snapshot(ram_with((1, 7))))
    store.save("t", snapshot(ram_with((1, 8))))
    assert [s.tag for s in store.snapshots()] == ["t"]
    assert store.load("t").ram == ram_with((1, 8))
    assert store.db.execute("SELECT COUNT(*) FROM pages").fetchone() == (1,)
    store.delete("t")
    assert store.snapshots() == []
    assert store.db.execute("SELECT COUNT(*) FROM pages").fetchone() == (0,)


def test_errors_are_clear(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s.sqlite")
    with pytest.raises(StoreError, match="Snapshot 'nope' does not exist"):
        store.load("nope")
    with pytest.raises(StoreError, match="numeric"):
        store.save("12", snapshot(ram_with()))
    store.save("t", snapshot(ram_with((3, 9))))
    store.db.execute("UPDATE pages SET data = ?", (b"garbage",))
    with pytest.raises(StoreError, match="corrupt"):
        store.load("t")


def test_failed_save_keeps_the_old_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "s.sqlite")
    store.save("t", snapshot(ram_with((2, 5))))
    with pytest.raises(StoreError):
        store.save("t", snapshot(b"\x01" * 100))  # not whole pages: refused before writing
    store.db.execute("CREATE TRIGGER fail BEFORE INSERT ON sections BEGIN "
                     "SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(StoreError, match="disk full"):
        store.save("t", snapshot(ram_with((2, 6))))
    assert store.load("t").ram == ram_with((2, 5))


WRITER = """
import sys
from emud.snapshots import Section, SnapshotData, SnapshotStore
store = SnapshotStore(sys.argv[1])
ram = bytearray(4 << 20)
n = 0
while True:
    n += 1
    ram[(n * 4096 * 7) % len(ram)] = n & 0xff
    ram[n % len(ram)] ^= 0x5a
    store.save("busy" if n > 2 else f"keep{n}",
               SnapshotData({"n": n}, [Section("cpu", 0, 1, bytes([n & 0xff]))], bytes(ram), n, n))
    if n == 2:
        print("ready", flush=True)
"""


def test_kill_during_savevm_leaves_the_store_readable(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    for delay in (0.05, 0.2, 0.4):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        time.sleep(delay)  # only varies where the kill lands; nothing is asserted on timing
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        store = SnapshotStore(path)
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for tag in store.tags():
            store.load(tag)  # every page present and matching its digest
        assert {"keep1", "keep2"} <= set(store.tags())
        store.close()
    sqlite3.connect(path).close()


def test_the_wal_stays_bounded_across_many_saves(tmp_path: Path) -> None:
    import random

    from emud.snapshots import WAL_KEEP_BYTES

    path = tmp_path / "s.sqlite"
    store = SnapshotStore(path)
    wal = Path(f"{path}-wal")
    for n in range(24):
        ram = random.Random(n).randbytes(2 << 20)  # 2 MiB of new pages, each save
        store.save(f"t{n % 2}", snapshot(ram, clock=n))
        assert wal.stat().st_size <= WAL_KEEP_BYTES, n
    # Two live snapshots of 2 MiB each, a third while a save replaces one (atomically);
    # freed pages are reused, not piled up.
    assert path.stat().st_size < 4 * (2 << 20)
    store.close()


def damaged(tmp_path: Path, sql: str, *args: object) -> SnapshotStore:
    store = SnapshotStore(tmp_path / "s.sqlite")
    store.save("one", snapshot(ram_with((1, 1))))
    store.save("two", snapshot(ram_with((2, 2))))
    store.db.execute(sql, args)
    return store


@pytest.mark.parametrize(("sql", "args", "message"), [
    ("UPDATE snapshots SET config = '{' WHERE tag = 'two'", (), r"'two' \(ID 2\).*config"),
    ("UPDATE snapshots SET config = '[1]' WHERE tag = 'two'", (), r"'two' \(ID 2\).*config"),
    ("UPDATE snapshots SET date = ? WHERE tag = 'two'", (2.0**62,), r"'two' \(ID 2\).*date"),
    ("UPDATE snapshots SET vm_clock_ns = 'x' WHERE tag = 'two'", (), r"ID 2\).*vm_clock_ns"),
    ("UPDATE snapshots SET page_table = ? WHERE tag = 'two'", (b"junk",),
     r"'two' \(ID 2\).*page table"),
    ("UPDATE snapshots SET page_table = 7 WHERE tag = 'two'", (), r"ID 2\).*page_table"),
])
def test_a_damaged_record_is_named_by_info_and_load(tmp_path: Path, sql: str,
                                                     args: tuple[object, ...],
                                                     message: str) -> None:
    store = damaged(tmp_path, sql, *args)
    with pytest.raises(StoreError, match=message):
        store.snapshots()
    with pytest.raises(StoreError, match=r"ID 2|does not exist|'two'"):
        store.load("2")
    assert store.load("one").ram == ram_with((1, 1))  # the others still load
    store.delete("2")  # and the damaged one can be deleted
    assert [i.tag for i in store.snapshots()] == ["one"]


def test_a_malformed_file_names_the_store(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = SnapshotStore(path)
    store.save("one", snapshot(ram_with((1, 1))))
    store.close()
    data = bytearray(path.read_bytes())
    data[4096 : 4096 + 64] = bytes(range(64))  # the first table's b-tree page header
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"snapshot store {path}"):
        SnapshotStore(path).snapshots()
