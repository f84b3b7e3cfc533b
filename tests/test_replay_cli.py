"""`emud run --record FILE` then `--replay FILE` in new processes; bad files exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import IMAGES, ROOT

ECHO = IMAGES / "uart_echo.elf"


def emud(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "emud", "run", *args, "-serial", "stdio"],
                          input=stdin, capture_output=True, cwd=ROOT, timeout=60, check=False)


def test_a_recorded_session_replays_in_a_new_process(tmp_path: Path) -> None:
    session = tmp_path / "s.rr"
    recorded = emud(str(ECHO), "--record", str(session), stdin=b"hello q")
    assert recorded.returncode == 0, recorded.stderr
    assert b"hello" in recorded.stdout and session.stat().st_mode & 0o077 == 0
    replayed = emud(str(ECHO), "--replay", str(session), stdin=b"other input")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == recorded.stdout

    data = session.read_bytes()
    (tmp_path / "cut.rr").write_bytes(data[:-5])
    (tmp_path / "bad.rr").write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    for name, args, message in [
            ("cut.rr", (str(ECHO),), b"truncated"),
            ("bad.rr", (str(ECHO),), b"corrupt record"),
            ("s.rr", (str(IMAGES / "counter.elf"),), b"recorded with uart_echo.elf"),
            ("s.rr", (str(ECHO), "-m", "8M"), b"bytes of RAM, this run has 8388608")]:
        result = emud(*args, "--replay", str(tmp_path / name))
        assert result.returncode == 1, (name, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and message in lines[0] and name.encode() in lines[0], lines
