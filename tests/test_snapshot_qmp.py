"""savevm/loadvm scripted over QMP against a real `emud run` process (the README example)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient
from test_qmp_cli import Process, qmp_daemon

from conftest import IMAGES


@contextlib.asynccontextmanager
async def start(tmp_path: Path, *extra: str, qmp_address: str = "tcp:127.0.0.1:0"
                ) -> AsyncIterator[tuple[Process, QMPClient, Path]]:
    store = tmp_path / "snaps.sqlite"
    async with qmp_daemon(str(IMAGES / "hpet_timers.elf"), "-S", "--icount", "shift=2",
                          "--qmp", qmp_address, "-serial", "ringbuf", "--snapshots",
                          str(store), *extra) as (process, qmp):
        yield process, qmp, store


@pytest.fixture
async def emud(tmp_path: Path) -> AsyncIterator[tuple[Process, QMPClient, Path]]:
    async with start(tmp_path) as running:
        yield running


async def hmp(qmp: QMPClient, line: str) -> str:
    result: str = await qmp.execute("human-monitor-command", {"command-line": line})
    return result


async def state(qmp: QMPClient) -> tuple[Any, ...]:
    regs = await hmp(qmp, "info registers")
    clock = await hmp(qmp, "info clock")
    ram = await hmp(qmp, "xp /64wx 0x80000000")
    return regs, clock, ram


async def test_save_run_load_is_exactly_where_it_was(
        emud: tuple[Process, QMPClient, Path]) -> None:
    _, qmp, store = emud
    await hmp(qmp, "run-for 300us")
    saved = await qmp.execute("x-emud-savevm", {"tag": "t0"})
    assert isinstance(saved, dict) and saved["tag"] == "t0"
    before = await state(qmp)
    out_before = await hmp(qmp, "ringbuf_read serial0 4096")
    await hmp(qmp, "run-for 500us")
    after_first_run = await state(qmp)
    out_first = await hmp(qmp, "ringbuf_read serial0 4096")
    assert after_first_run != before
    await qmp.execute("x-emud-loadvm", {"tag": "t0"})
    assert await state(qmp) == before
    await hmp(qmp, "run-for 500us")
    assert await state(qmp) == after_first_run  # deterministic replay
    assert await hmp(qmp, "ringbuf_read serial0 4096") == out_first
    assert "hpet" in out_before + out_first
    listing = await hmp(qmp, "info snapshots")
    assert listing.splitlines()[1].split() == ["ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK",
                                               "ICOUNT"]
    assert " t0 " in listing
    verbose = await hmp(qmp, "info snapshots -v")
    assert "STORED" in verbose and "SHARED" in verbose
    assert store.exists()


async def test_failed_load_leaves_machine_and_run_state(
        emud: tuple[Process, QMPClient, Path]) -> None:
    _, qmp, _ = emud
    await hmp(qmp, "savevm good")
    before = await state(qmp)
    status = await qmp.execute("query-status")
    with pytest.raises(ExecuteError, match="does not exist"):
        await qmp.execute("x-emud-loadvm", {"tag": "nope"})
    text = await hmp(qmp, "loadvm nope")
    assert text.startswith("Error: ") and "nope" in text
    assert await state(qmp) == before
    assert await qmp.execute("query-status") == status


async def test_snapshot_diff_and_export_import(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir(mode=0o700)
    async with start(tmp_path, "--export-dir", str(exports), "--tcp-host-files") as (_, qmp, _):
        await hmp(qmp, "savevm a")
        await hmp(qmp, "run-for 200us")
        await hmp(qmp, "savevm b")
        diff = await hmp(qmp, "snapshot diff a b")
        assert diff.startswith("diff a -> b") and "emud-clock" in diff and "cpu" in diff
        structured = await qmp.execute("x-emud-snapshot-diff", {"a": "a"})
        assert isinstance(structured, dict) and structured["b"] == "current"
        assert (await hmp(qmp, "snapshot export b b.qevm")).startswith("wrote ")
        stream = exports / "b.qevm"
        assert stream.read_bytes()[:4] == b"QEVM"
        assert stream.stat().st_mode & 0o777 == 0o600
        imported = await qmp.execute("x-emud-snapshot-import", {"file": "b.qevm", "tag": "c"})
        assert isinstance(imported, dict) and imported["tag"] == "c"
        assert "(no differences)" in await hmp(qmp, "snapshot diff b c")
        # No overwrite unless asked for; then the file is replaced.
        assert "already exists" in await hmp(qmp, "snapshot export a b.qevm")
        assert stream.read_bytes() == (exports / "b.qevm").read_bytes()
        await qmp.execute("x-emud-snapshot-export", {"tag": "a", "file": "b.qevm",
                                                     "overwrite": True})
        await hmp(qmp, "snapshot import b.qevm a2")
        assert "(no differences)" in await hmp(qmp, "snapshot diff a a2")
        await hmp(qmp, "delvm a")
        assert " a " not in await hmp(qmp, "info snapshots")


async def test_tcp_qmp_refuses_host_files_without_the_opt_in(
        tmp_path: Path, emud: tuple[Process, QMPClient, Path]) -> None:
    """Every local user can reach a TCP port: there export/import must be asked for at start."""
    _, qmp, _ = emud
    await hmp(qmp, "savevm a")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    for command, args in (("x-emud-snapshot-export", {"tag": "a", "file": "x.qevm"}),
                          ("x-emud-snapshot-export", {"tag": "a", "file": str(victim),
                                                      "overwrite": True}),
                          ("x-emud-snapshot-import", {"file": "x.qevm"})):
        with pytest.raises(ExecuteError, match="disabled on TCP ports.*--tcp-host-files"):
            await qmp.execute(command, args)
    assert "disabled on TCP" in await hmp(qmp, f"snapshot export a {victim}")
    assert victim.read_bytes() == b"precious"


async def test_unix_qmp_may_export_into_the_default_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0600 unix socket is the user's own door: no opt-in, names in the export directory."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))  # inherited by the daemon
    async with start(tmp_path, qmp_address=f"unix:{tmp_path / 'q.sock'}") as (_, qmp, _):
        await hmp(qmp, "savevm a")
        assert (await hmp(qmp, "snapshot export a a.qevm")).startswith("wrote ")
        for bad in ("../a.qevm", str(tmp_path / "abs.qevm"), "..", "sub/a.qevm"):
            assert "invalid file name" in await hmp(qmp, f"snapshot export a {bad}")
    exports = state / "emud" / "exports"
    assert exports.stat().st_mode & 0o777 == 0o700
    assert (exports / "a.qevm").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in exports.iterdir()) == ["a.qevm"]
    assert not (tmp_path / "abs.qevm").exists() and not (tmp_path / "a.qevm").exists()


async def test_nul_bytes_and_lone_surrogates_are_clear_errors(tmp_path: Path) -> None:
    # The QMP reader refuses U+0000 in any argument before a command runs (a lone
    # surrogate is already a JSON error there: tests/test_qmp.py); the snapshot layer's
    # own checks of tags and names are in tests/test_snapshot_hostfiles.py.
    exports = tmp_path / "exports"
    exports.mkdir(mode=0o700)
    async with start(tmp_path, "--export-dir", str(exports), "--tcp-host-files") as (_, qmp, _):
        await hmp(qmp, "savevm a")
        for command in ("x-emud-savevm", "x-emud-loadvm", "x-emud-delvm"):
            with pytest.raises(ExecuteError, match="Invalid parameter 'tag'") as error:
                await qmp.execute(command, {"tag": "a\x00b"})
            assert "internal error" not in str(error.value)
        for name, reason in (("a\x00.qevm", "Invalid parameter 'file'"),
                             ("/etc/passwd", "invalid file name")):
            with pytest.raises(ExecuteError, match=reason):
                await qmp.execute("x-emud-snapshot-export", {"tag": "a", "file": name})
            with pytest.raises(ExecuteError, match=reason):
                await qmp.execute("x-emud-snapshot-import", {"file": name})
        with pytest.raises(ExecuteError, match="cannot open 'missing.qevm'"):
            await qmp.execute("x-emud-snapshot-import", {"file": "missing.qevm"})
        assert " a " in await hmp(qmp, "info snapshots")  # the store is still usable
