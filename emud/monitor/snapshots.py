"""Snapshot commands: the store behind savevm/loadvm/delvm/info snapshots, and emud's extras.

`SnapshotService` is the monitor's `SnapshotHook`: it opens the SQLite store on
first use, saves and loads the whole machine through `emud.migration`, and
keeps QEMU's run-state rules (a running guest is stopped around a load and
resumed only if the load succeeded; a failed load changes nothing at all).

Extra commands (HMP, with QMP twins):
  snapshot diff A [B]          x-emud-snapshot-diff {a, b?}    B omitted = the machine now
  snapshot export TAG FILE     x-emud-snapshot-export {tag, file}
  snapshot import FILE [TAG]   x-emud-snapshot-import {file, tag?}
  (QMP) x-emud-savevm / x-emud-loadvm / x-emud-delvm {tag}: synchronous savevm & co.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emud import migration
from emud.monitor.commands import command, snapshot_store
from emud.monitor.errors import MonitorError
from emud.snapshots import SnapshotInfo, SnapshotStore, StoreError, default_store_path

if TYPE_CHECKING:
    from emud.daemon import Daemon
    from emud.monitor.core import Monitor


class SnapshotService:
    def __init__(self, daemon: Daemon, path: str | Path | None = None) -> None:
        self.daemon = daemon
        machine = daemon.machine
        digest = machine.image.digest if machine.image else "no-image"
        self.path = Path(path) if path else default_store_path(digest)
        self._store: SnapshotStore | None = None

    @property
    def store(self) -> SnapshotStore:
        if self._store is None:
            try:
                self._store = SnapshotStore(self.path)
            except StoreError as e:
                raise MonitorError(str(e)) from None
        return self._store

    def save(self, tag: str) -> dict[str, Any]:
        try:
            info = migration.savevm(self.daemon.machine, self.store, tag)
        except (StoreError, migration.MigrationError) as e:
            raise MonitorError(f"Error while creating snapshot: {e}") from None
        return _describe(info)

    def load(self, tag: str) -> None:
        daemon = self.daemon
        try:
            snap = self.store.load(tag)
            apply = migration.stage(daemon.machine, snap)
        except (StoreError, migration.MigrationError) as e:
            raise MonitorError(f"Error while loading snapshot '{tag}': {e}") from None
        was_running = daemon.running
        if was_running:
            daemon.stop("restore-vm")
        apply()
        if daemon.status in ("shutdown", "restore-vm"):
            daemon.status = "paused"  # the guest lives again; `cont` runs it
        if was_running:
            daemon.cont()

    def delete(self, tag: str) -> None:
        try:
            self.store.delete(tag)
        except StoreError as e:
            raise MonitorError(str(e)) from None

    def tags(self) -> list[str]:
        return self.store.tags()

    def list(self) -> list[dict[str, Any]]:
        return [_describe(info) for info in self.store.snapshots()]


def _describe(info: SnapshotInfo) -> dict[str, Any]:
    """QEMU's SnapshotInfo field names, plus emud's storage figures."""
    return {"id": str(info.id), "tag": info.tag, "vm-state-size": info.vm_size,
            "date-sec": int(info.date), "date-nsec": int(info.date % 1 * 1e9),
            "vm-clock-nsec": info.vm_clock_ns, "icount": info.icount,
            "stored-bytes": info.stored_bytes, "ram-pages": info.ram_pages,
            "shared-pages": info.shared_pages,
            "image-sha256": info.config.get("image_sha256")}


def _service(m: Monitor) -> SnapshotService:
    """The store behind the monitor; diff/export/import need emud's own, not any hook."""
    service = snapshot_store(m)  # "Snapshots are not available" when there is none
    if not isinstance(service, SnapshotService):
        raise MonitorError("this snapshot store cannot diff, export or import snapshots")
    return service


# --- QMP: synchronous savevm/loadvm/delvm -------------------------------------------------


@command(qmp="x-emud-savevm", args="tag:s")
def qmp_savevm(m: Monitor, tag: str) -> dict[str, Any]:
    return _service(m).save(tag)


@command(qmp="x-emud-loadvm", args="tag:s")
def qmp_loadvm(m: Monitor, tag: str) -> None:
    _service(m).load(tag)


@command(qmp="x-emud-delvm", args="tag:s")
def qmp_delvm(m: Monitor, tag: str) -> None:
    _service(m).delete(tag)


# --- snapshot diff / export / import ------------------------------------------------------


def snapshot_diff(m: Monitor, a: str, b: str | None = None) -> dict[str, Any]:
    service = _service(m)
    machine = m.daemon.machine
    try:
        old = service.store.load(a)
        new = service.store.load(b) if b else migration.capture(machine)
        changes = migration.diff(machine, old, new)
    except (StoreError, migration.MigrationError) as e:
        raise MonitorError(str(e)) from None
    return {"a": a, "b": b or "current",
            "changes": [{"section": c.section, "field": c.field, "old": c.old, "new": c.new}
                        for c in changes]}


def _render_diff(result: dict[str, Any]) -> str:
    lines = [f"diff {result['a']} -> {result['b']}"]
    if not result["changes"]:
        return lines[0] + "\n (no differences)"
    ram = [c["field"] for c in result["changes"] if c["section"] == "ram"]
    for c in result["changes"]:
        if c["section"] == "ram":
            continue
        lines.append(f" {c['section']:<11} {c['field']}: {_value(c['old'])} -> {_value(c['new'])}")
    if ram:
        lines.append(f" {'ram':<11} {len(ram)} range(s) differ: {', '.join(ram)}")
    return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) and not isinstance(v, bool) else repr(v)


command(qmp="x-emud-snapshot-diff", args="a:s,b:s?")(snapshot_diff)


def snapshot_export(m: Monitor, tag: str, file: str) -> dict[str, Any]:
    service = _service(m)
    try:
        stream = migration.export_stream(m.daemon.machine, service.store.load(tag))
        Path(file).write_bytes(stream)
    except (StoreError, migration.MigrationError) as e:
        raise MonitorError(str(e)) from None
    except OSError as e:
        raise MonitorError(f"cannot write {file}: {e.strerror}") from None
    return {"file": file, "size": len(stream)}


def snapshot_import(m: Monitor, file: str, tag: str | None = None) -> dict[str, Any]:
    service = _service(m)
    try:
        data = Path(file).read_bytes()
    except OSError as e:
        raise MonitorError(f"cannot read {file}: {e.strerror}") from None
    try:
        snap = migration.import_stream(m.daemon.machine, data)
        info = service.store.save(tag or Path(file).stem, snap)
    except (StoreError, migration.MigrationError) as e:
        raise MonitorError(str(e)) from None
    return _describe(info)


command(qmp="x-emud-snapshot-export", args="tag:s,file:s")(snapshot_export)
command(qmp="x-emud-snapshot-import", args="file:s,tag:s?")(snapshot_import)


@command("snapshot", args="action:s,first:s?,second:s?", params="diff A [B] | export TAG FILE | "
         "import FILE [TAG]", complete="diff|export|import tags tags",
         help="compare snapshots, or export/import one as a QEMU migration stream",
         render=lambda r: _render_diff(r) if "changes" in r else
         (f"wrote {r['size']} bytes to {r['file']}" if "file" in r and "size" in r
          else f"imported snapshot '{r['tag']}' (ID {r['id']})"))
def snapshot(m: Monitor, action: str, first: str = "", second: str = "") -> dict[str, Any]:
    if action == "diff" and first:
        return snapshot_diff(m, first, second or None)
    if action == "export" and first and second:
        return snapshot_export(m, first, second)
    if action == "import" and first:
        return snapshot_import(m, first, second or None)
    raise MonitorError("usage: snapshot diff A [B] | snapshot export TAG FILE | "
                       "snapshot import FILE [TAG]")
