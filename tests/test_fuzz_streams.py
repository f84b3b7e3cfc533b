"""Bounded, seeded fuzzing of what emud reads back: exported QEVM streams, damaged stores,
and stores whose writer was killed with SIGKILL in the middle of a save.

Each case ends either in a clear, one-line error (MigrationError, MonitorError) or in
exactly the state that was saved; nothing else (no "internal error", no other state).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, ROOT
from emud import migration as mg
from emud.chardev import RingBackend
from emud.daemon import Daemon
from emud.loader import load_elf
from emud.machine import Machine
from emud.monitor import Monitor, MonitorError, SnapshotService
from emud.snapshots import WAL_KEEP_BYTES, SnapshotData, SnapshotStore

RAM = 64 << 10  # small RAM: many cases per second, every page kind still present
STREAMS = 2000
STORES = 750
KILLS = 5


def small_machine() -> Machine:
    machine = Machine(RingBackend(), ram_size=RAM, icount_shift=1)
    machine.load(load_elf(IMAGES / "hpet_timers.elf"))
    return machine


def same(a: SnapshotData, b: SnapshotData) -> bool:
    return (a.config, a.sections, bytes(a.ram), a.vm_clock_ns, a.icount) == (
        b.config, b.sections, bytes(b.ram), b.vm_clock_ns, b.icount)


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # a byte replaced
        out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind == 2:  # truncated
        del out[rng.randrange(len(out)):]
    elif kind == 3:  # bytes dropped or inserted
        at = rng.randrange(len(out))
        if rng.random() < 0.5:
            del out[at : at + rng.randint(1, 16)]
        else:
            out[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4:  # a big-endian word (a length, an address) replaced
        at = rng.randrange(len(out) - 8)
        out[at : at + 8] = rng.choice([rng.getrandbits(64), 1 << 30, 2 << 30, 1 << 63,
                                       (1 << 64) - 4096]).to_bytes(8, "big")
    else:  # a chunk duplicated
        at = rng.randrange(len(out))
        out[at:at] = out[at : at + rng.randint(1, 64)]
    return bytes(out)


def test_mutated_streams_refuse_or_give_exactly_the_original() -> None:
    machine = small_machine()
    machine.run_until_poweroff(max_insns=30_000)
    snap = mg.capture(machine)
    stream = mg.export_stream(machine, snap)
    rng = random.Random(15)
    outcomes = {"refused": 0, "identical": 0}
    for _ in range(STREAMS):
        damaged = mutate(rng, stream)
        try:
            back = mg.import_stream(machine, damaged)
        except mg.MigrationError as e:
            assert str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
        else:
            assert same(back, snap), "a damaged stream imported other state"
            outcomes["identical"] += 1
    # Most mutations hit RAM or section bytes and must be caught; a few land in the
    # trailing description, which carries no state.
    assert outcomes["refused"] > STREAMS // 2, outcomes


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, SnapshotData]]:
    path = tmp_path_factory.mktemp("store") / "base.sqlite"
    machine = small_machine()
    store = SnapshotStore(path)
    saved = {}
    for tag, insns in (("one", 10_000), ("two", 20_000), ("three", 5_000)):
        machine.run_until_poweroff(max_insns=insns)
        mg.savevm(machine, store, tag)
        saved[tag] = mg.capture(machine)
    store.close()
    return path, saved


def damage_rows(rng: random.Random, path: Path) -> None:
    """Row-level damage SQLite itself cannot see: dropped rows, columns of the wrong type."""
    db = sqlite3.connect(path)
    table, columns = rng.choice([
        ("snapshots", ["tag", "date", "vm_clock_ns", "icount", "vm_size", "stored_bytes",
                       "config", "page_table", "digest"]),
        ("sections", ["name", "instance_id", "version_id", "data", "digest"]),
        ("pages", ["data"])])
    rowids = [r for (r,) in db.execute(f"SELECT rowid FROM {table}")]
    rowid = rng.choice(rowids)
    if rng.random() < 0.3:
        db.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
    else:
        value: Any = rng.choice([None, -1, 2**62, 1.5, "", "{", "[]", '{"a": 1}', "\udcff",
                                 b"", rng.randbytes(16), "x" * 1000])
        if isinstance(value, str) and "\udcff" in value:
            value = value.encode("utf-8", "surrogatepass")  # stored as invalid UTF-8 text
            db.execute(f"UPDATE {table} SET {rng.choice(columns)} = CAST(? AS TEXT)"
                       " WHERE rowid = ?", (value, rowid))
        else:
            try:
                db.execute(f"UPDATE {table} SET {rng.choice(columns)} = ? WHERE rowid = ?",
                           (value, rowid))
            except sqlite3.IntegrityError:  # NULL in a NOT NULL column: drop the row instead
                db.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
    db.commit()
    db.close()


def test_damaged_stores_answer_with_clear_errors(
        tmp_path: Path, base_store: tuple[Path, dict[str, SnapshotData]]) -> None:
    base, saved = base_store
    data = base.read_bytes()
    rng = random.Random(14)
    errors = loads = 0
    for case in range(STORES):
        path = tmp_path / f"{case}.sqlite"
        kind = rng.randrange(3)
        if kind == 0:
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(bytes(damaged))
        elif kind == 1:
            path.write_bytes(data[: rng.randrange(len(data))])
        else:
            shutil.copy(base, path)
            damage_rows(rng, path)
        machine = small_machine()
        daemon = Daemon(machine)
        service = daemon.snapshots = SnapshotService(daemon, path)
        monitor = Monitor(daemon)
        for line in ("info snapshots", "info snapshots -v", "loadvm one", "loadvm two",
                     "loadvm 3", "snapshot diff one two", "delvm one"):
            try:
                monitor.execute_hmp_now(line)
            except MonitorError as e:
                assert str(e) and "\n" not in str(e), line
                errors += 1
                continue
            if line.startswith("loadvm"):
                tag = {"3": "three"}.get(line.split()[1], line.split()[1])
                assert same(mg.capture(machine), saved[tag]), (case, line)
                loads += 1
        if service._store is not None:
            service._store.close()
    assert errors > STORES and loads > STORES  # both outcomes are exercised


WRITER = """
import random, sys
from emud.snapshots import Section, SnapshotData, SnapshotStore
store = SnapshotStore(sys.argv[1])
n = 0
while True:
    n += 1
    ram = random.Random(n).randbytes(4 << 20)  # every page new and incompressible
    print(f"saving {n}", flush=True)
    store.save(f"s{n % 3}", SnapshotData({"n": n}, [Section("cpu", 0, 1, bytes([n & 0xff]))],
                                         ram, n, n))
"""


def test_kill_during_savevm_leaves_a_readable_store_and_a_bounded_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    wal = Path(f"{path}-wal")
    for kill in range(KILLS):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert writer.stdout is not None
        # Kill while save number kill + 2 runs: its "saving" line is printed just before.
        while writer.stdout.readline() != f"saving {kill + 2}\n":
            pass
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        store = SnapshotStore(path)  # opening folds the killed save's WAL away
        assert wal.stat().st_size <= WAL_KEEP_BYTES
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for tag in store.tags():
            snap = store.load(tag)
            n = snap.config["n"]
            assert snap.ram == random.Random(n).randbytes(4 << 20) and snap.vm_clock_ns == n
        store.close()
    # Live pages are at most three snapshots' worth, plus what SQLite keeps free.
    assert path.stat().st_size < 4 * (4 << 20) * 1.2
