"""The gdb port on TCP is every local user's: `monitor snapshot export` must not write host
files through it unless the daemon was started with --tcp-host-files (real gdb-multiarch)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from test_gdb_e2e import COUNTER, TIMEOUT, Gdb, GdbError

from conftest import ROOT


async def monitor(gdb: Gdb, line: str) -> str:
    try:
        return await gdb.console(f"monitor {line}")
    except GdbError as e:  # a failed monitor command may come back as a gdb error
        return str(e)


async def session(tmp_path: Path, *extra: str) -> tuple[str, str]:
    """Save a snapshot over gdb, then try to export it onto a file outside any export dir
    and by name into the export directory; returns both answers."""
    exports = tmp_path / "exports"
    exports.mkdir(mode=0o700, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(COUNTER), "-S", "--gdb", "tcp:127.0.0.1:0",
        "-serial", "null", "--snapshots", str(tmp_path / "s.sqlite"),
        "--export-dir", str(exports), *extra, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    gdb = await Gdb.start(COUNTER)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        match = re.search(rb"listening on tcp:127\.0\.0\.1:(\d+)", line)
        assert match, line
        await gdb.cmd(f"-target-select remote 127.0.0.1:{int(match.group(1))}")
        await gdb.stopped()
        await monitor(gdb, "savevm x")
        outside = await monitor(gdb, f"snapshot export -f x {tmp_path / 'victim'}")
        inside = await monitor(gdb, "snapshot export x x.qevm")
        return outside, inside
    finally:
        await gdb.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), TIMEOUT)


async def test_gdb_tcp_port_cannot_write_host_files(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim.chmod(0o600)
    outside, inside = await session(tmp_path)
    assert "disabled on TCP ports" in outside and "disabled on TCP ports" in inside
    assert victim.read_bytes() == b"precious"
    assert list((tmp_path / "exports").iterdir()) == []


async def test_gdb_tcp_port_with_the_opt_in_writes_only_inside_the_export_dir(
        tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    outside, inside = await session(tmp_path, "--tcp-host-files")
    assert "invalid file name" in outside and victim.read_bytes() == b"precious"
    assert "wrote" in inside
    assert (tmp_path / "exports" / "x.qevm").read_bytes()[:4] == b"QEVM"
