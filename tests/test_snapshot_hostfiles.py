"""Host files behind snapshot export/import and the store: where, what kind, which modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import IMAGES, boot
from emud.daemon import Daemon
from emud.monitor import Monitor, MonitorError, SnapshotService
from emud.snapshots import ExportDir, SnapshotStore, StoreError


@pytest.fixture
def exports(tmp_path: Path) -> ExportDir:
    path = tmp_path / "exports"
    path.mkdir(mode=0o700)
    return ExportDir(path)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "..", ".", "", "a/b", "a\0b",
                                  "\udcff", "x" * 256, "tab\there"])
def test_names_outside_the_directory_or_unusable_are_refused(exports: ExportDir,
                                                             name: str) -> None:
    with pytest.raises(StoreError, match="invalid file name"):
        exports.write(name, b"data")
    with pytest.raises(StoreError, match="invalid file name"):
        exports.read(name, 100)
    assert list(exports.path.iterdir()) == []


def test_symlinks_are_never_followed(exports: ExportDir, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    (exports.path / "link").symlink_to(target)
    (exports.path / "dangling").symlink_to(tmp_path / "created-by-emud")
    for name in ("link", "dangling"):
        for overwrite in (False, True):
            with pytest.raises(StoreError, match="symbolic link|already exists"):
                exports.write(name, b"data", overwrite=overwrite)
        with pytest.raises(StoreError, match="symbolic link"):
            exports.read(name, 100)
    assert target.read_bytes() == b"precious" and not (tmp_path / "created-by-emud").exists()


def test_no_overwrite_unless_asked_and_then_private(exports: ExportDir) -> None:
    old = exports.path / "s.qevm"
    old.write_bytes(b"old contents, longer than the new")
    old.chmod(0o644)
    with pytest.raises(StoreError, match="already exists"):
        exports.write("s.qevm", b"new")
    assert old.read_bytes().startswith(b"old")
    exports.write("s.qevm", b"new", overwrite=True)
    assert old.read_bytes() == b"new" and mode(old) == 0o600
    exports.write("fresh.qevm", b"x")
    assert mode(exports.path / "fresh.qevm") == 0o600


def test_fifos_and_devices_are_refused_without_blocking(exports: ExportDir) -> None:
    os.mkfifo(exports.path / "fifo")
    with pytest.raises(StoreError, match="not a regular file"):
        exports.read("fifo", 100)  # O_NONBLOCK: opening a FIFO with no writer returns at once
    with pytest.raises(StoreError, match="not a regular file"):
        exports.write("fifo", b"x", overwrite=True)


def test_reads_are_bounded_before_reading(exports: ExportDir) -> None:
    (exports.path / "big").write_bytes(bytes(101))
    with pytest.raises(StoreError, match="101 bytes, more than the 100"):
        exports.read("big", 100)
    assert exports.read("big", 101) == bytes(101)


def test_an_explicit_directory_must_exist_and_be_private(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="No such file"):
        ExportDir(tmp_path / "missing").check()
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(StoreError, match="lets other users in"):
        ExportDir(open_dir).check()
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    with pytest.raises(StoreError, match="symbolic link"):
        ExportDir(tmp_path / "link").check()


def test_export_onto_the_live_store_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    daemon = Daemon(boot(IMAGES / "counter.elf"))
    service = SnapshotService(daemon, home / "s.sqlite", export_dir=home)
    daemon.snapshots = service
    monitor = Monitor(daemon)
    monitor.execute_hmp_now("savevm a")
    before = (home / "s.sqlite").read_bytes()
    for name in ("s.sqlite", "s.sqlite-wal", "s.sqlite-shm"):
        if (home / name).exists():
            with pytest.raises(MonitorError, match="live snapshot store"):
                monitor.execute_hmp_now(f"snapshot export -f a {name}")
    assert (home / "s.sqlite").read_bytes() == before
    assert service.store.load("a")


def test_store_and_its_wal_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = SnapshotStore(tmp_path / "s.sqlite")
        store.db.execute("BEGIN IMMEDIATE")  # -wal and -shm exist while a write is open
        store.db.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        for suffix in ("", "-wal", "-shm"):
            assert mode(Path(f"{tmp_path / 's.sqlite'}{suffix}")) == 0o600, suffix
        store.db.execute("COMMIT")
        store.close()
    finally:
        os.umask(old)


def test_an_older_open_store_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    SnapshotStore(path).close()
    path.chmod(0o644)
    SnapshotStore(path).close()
    assert mode(path) == 0o600


def test_the_default_store_directory_is_private(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    daemon = Daemon(boot(IMAGES / "counter.elf"))
    service = SnapshotService(daemon)
    service.save("a")
    assert mode(service.path.parent) == 0o700 and mode(service.path) == 0o600


def test_an_explicit_store_directory_must_exist(tmp_path: Path) -> None:
    daemon = Daemon(boot(IMAGES / "counter.elf"))
    service = SnapshotService(daemon, tmp_path / "no" / "s.sqlite")
    with pytest.raises(MonitorError, match="cannot open snapshot store"):
        service.save("a")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("tag", ["a\0b", "\udcff", "", "12", "x" * 300])
def test_bad_tags_are_clear_errors(tmp_path: Path, tag: str) -> None:
    daemon = Daemon(boot(IMAGES / "counter.elf"))
    service = SnapshotService(daemon, tmp_path / "s.sqlite")
    with pytest.raises(MonitorError, match="invalid snapshot tag"):
        service.save(tag)
    if tag and not tag.isdigit():
        with pytest.raises(MonitorError, match="invalid snapshot tag"):
            service.load(tag)
        with pytest.raises(MonitorError, match="invalid snapshot tag"):
            service.delete(tag)
