"""Snapshot commands: the store behind savevm/loadvm/delvm/info snapshots, and emud's extras.

`SnapshotService` is the monitor's `SnapshotHook`: it opens the SQLite store on
first use, saves and loads the whole machine through `emud.migration`, and
keeps QEMU's run-state rules (a running guest is stopped around a load and
resumed only if the load succeeded; a failed load changes nothing at all).

Extra commands (HMP, with QMP twins):
  snapshot diff A [B]            x-emud-snapshot-diff {a, b?}    B omitted = the machine now
  snapshot export [-f] TAG NAME  x-emud-snapshot-export {tag, file, overwrite?}
  snapshot import NAME [TAG]     x-emud-snapshot-import {file, tag?}
  (QMP) x-emud-savevm / x-emud-loadvm / x-emud-delvm {tag}: synchronous savevm & co.

Export and import touch host files only by name inside the export directory
(`ExportDir`), and only through doors no other local user can reach (a unix
socket, the process itself) unless the daemon was started with --tcp-host-files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emud import migration
from emud.hostfiles import UnsafePathError, ensure_private_dir
from emud.monitor.commands import command, snapshot_store
from emud.monitor.errors import MonitorError
from emud.snapshots import (
    ExportDir,
    SnapshotData,
    SnapshotInfo,
    SnapshotStore,
    StoreError,
    check_tag,
    default_store_path,
    find_elsewhere,
)

if TYPE_CHECKING:
    from emud.daemon import Daemon
    from emud.monitor.core import Monitor


class SnapshotService:
    """`export_dir` None: the default export directory; `tcp_host_files`: allow export
    and import through doors other local users can reach (gdb or QMP on TCP)."""

    def __init__(self, daemon: Daemon, path: str | Path | None = None, *,
                 export_dir: str | Path | None = None, tcp_host_files: bool = False) -> None:
        self.daemon = daemon
        machine = daemon.machine
        digest = machine.image.digest if machine.image else "no-image"
        self.default = not path
        self.path = Path(path) if path else default_store_path(digest)
        self.exports = ExportDir(export_dir)
        self.tcp_host_files = tcp_host_files
        self._store: SnapshotStore | None = None

    @property
    def store(self) -> SnapshotStore:
        if self._store is None:
            try:
                if self.default:  # the only directory emud creates; an explicit one must exist
                    ensure_private_dir(self.path.parent)
                self._store = SnapshotStore(self.path)
                image = self.daemon.machine.image
                if self.default and image is not None:
                    self._store.set_meta({"image_path": str(image.path.resolve()),
                                          "image_sha256": image.digest})
            except UnsafePathError as e:
                raise MonitorError(f"cannot open snapshot store {self.path}: {e}") from None
            except StoreError as e:
                raise MonitorError(str(e)) from None
        return self._store

    def _missing(self, tag: str, error: StoreError) -> str:
        """A tag missing from the default store may exist for an earlier build of the image
        (each build has its own store): say where, and how to load it."""
        image = self.daemon.machine.image
        if not self.default or image is None or not str(error).endswith("does not exist"):
            return str(error)
        found = find_elsewhere(self.path.parent, str(image.path.resolve()), tag, self.path)
        if not found:
            return str(error)
        newest = found[0]
        build = migration.describe_image({"image_sha256": newest.image_sha256,
                                          "image_name": image.path.name})
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.date))
        return (f"Snapshot '{tag}' does not exist for this build of "
                f"{migration.describe_image(migration.machine_config(self.daemon.machine))}; "
                f"it exists for an earlier build, {build}, saved {when}, in {newest.store}: "
                f"run that build with --snapshots {newest.store} to load it")

    def load_data(self, tag: str) -> SnapshotData:
        try:
            return self.store.load(tag)
        except StoreError as e:
            raise MonitorError(self._missing(tag, e)) from None

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
        except StoreError as e:
            raise MonitorError(f"Error while loading snapshot '{tag}': "
                               f"{self._missing(tag, e)}") from None
        except migration.MigrationError as e:
            raise MonitorError(f"Error while loading snapshot '{tag}': {e}") from None
        was_running = daemon.running
        if was_running:
            daemon.stop("restore-vm")
        apply()
        if daemon.replay is not None:  # a new branch of history starts here
            daemon.replay.restart()
        if daemon.status in ("shutdown", "restore-vm"):
            daemon.status = "paused"  # the guest lives again; `cont` runs it
        if was_running:
            daemon.cont()

    def delete(self, tag: str) -> None:
        try:
            self.store.delete(tag)
        except StoreError as e:
            raise MonitorError(self._missing(tag, e)) from None

    def tags(self) -> list[str]:
        try:
            return self.store.tags()
        except StoreError as e:
            raise MonitorError(str(e)) from None

    def list(self) -> list[dict[str, Any]]:
        try:
            return [_describe(info) for info in self.store.snapshots()]
        except StoreError as e:
            raise MonitorError(str(e)) from None

    def host_files(self, m: Monitor) -> ExportDir:
        """The export directory, if this monitor's door may touch host files at all."""
        if m.shared_door and not self.tcp_host_files:
            raise MonitorError("snapshot export/import are disabled on TCP ports, which every "
                               "local user can reach (use a unix socket, or start emud with "
                               "--tcp-host-files)")
        return self.exports


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
    old = service.load_data(a)
    new = service.load_data(b) if b else migration.capture(machine)
    try:
        changes = migration.diff(machine, old, new)
    except migration.MigrationError as e:
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


def snapshot_export(m: Monitor, tag: str, file: str, overwrite: bool = False
                    ) -> dict[str, Any]:
    service = _service(m)
    exports = service.host_files(m)
    snap = service.load_data(tag)
    store = service.store.path
    try:
        exports.check_name(file)
        stream = migration.export_stream(m.daemon.machine, snap)
        path = exports.write(file, stream, overwrite=overwrite,
                             protect=(store, Path(f"{store}-wal"), Path(f"{store}-shm")))
    except (StoreError, migration.MigrationError) as e:
        raise MonitorError(str(e)) from None
    return {"file": str(path), "size": len(stream)}


def snapshot_import(m: Monitor, file: str, tag: str | None = None) -> dict[str, Any]:
    service = _service(m)
    exports = service.host_files(m)
    machine = m.daemon.machine
    try:
        tag = check_tag(tag or Path(exports.check_name(file)).stem)
        data = exports.read(file, migration.stream_size_limit(machine.ram.size))
        snap = migration.import_stream(machine, data)
        info = service.store.save(tag, snap)
    except StoreError as e:
        raise MonitorError(str(e)) from None
    except migration.MigrationError as e:
        raise MonitorError(f"cannot import '{file}': {e}") from None
    return _describe(info)


command(qmp="x-emud-snapshot-export", args="tag:s,file:s,overwrite:b?")(snapshot_export)
command(qmp="x-emud-snapshot-import", args="file:s,tag:s?")(snapshot_import)


@command("snapshot", args="action:s,first:s?,second:s?,third:s?",
         params="diff A [B] | export [-f] TAG NAME | import NAME [TAG]",
         complete="diff|export|import tags tags",
         help="compare snapshots, or export/import one as a QEMU migration stream",
         render=lambda r: _render_diff(r) if "changes" in r else
         (f"wrote {r['size']} bytes to {r['file']}" if "file" in r and "size" in r
          else f"imported snapshot '{r['tag']}' (ID {r['id']})"))
def snapshot(m: Monitor, action: str, first: str = "", second: str = "", third: str = ""
             ) -> dict[str, Any]:
    if action == "diff" and first and not third:
        return snapshot_diff(m, first, second or None)
    if action == "export" and first == "-f" and second and third:
        return snapshot_export(m, second, third, overwrite=True)
    if action == "export" and first and second and not third:
        return snapshot_export(m, first, second)
    if action == "import" and first and not third:
        return snapshot_import(m, first, second or None)
    raise MonitorError("usage: snapshot diff A [B] | snapshot export [-f] TAG NAME | "
                       "snapshot import NAME [TAG] (NAME: a file in the export directory)")
