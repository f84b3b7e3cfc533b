"""`--vcd`: the interrupt lines as a waveform, read back with pyvcd's reader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from vcd.reader import TokenKind, tokenize

from conftest import IMAGES, ROOT

PERIOD_NS = 10_000 * 10  # hpet_timers.c: PERIOD ticks of the 100 MHz counter
PERIODS = 10


def read_vcd(path: Path) -> tuple[int, dict[str, list[tuple[int, str]]]]:
    """(timescale in ns, {scope.name: [(time, value)]}) from a VCD file."""
    names: dict[str, str] = {}
    scope: list[str] = []
    changes: dict[str, list[tuple[int, str]]] = {}
    timescale = 0
    now = 0
    with path.open("rb") as f:
        token: Any
        for token in tokenize(f):
            if token.kind is TokenKind.TIMESCALE:
                scale = {"ns": 1, "us": 1000}[token.data.unit.value]
                timescale = int(token.data.magnitude) * scale
            elif token.kind is TokenKind.SCOPE:
                scope.append(token.data.ident)
            elif token.kind is TokenKind.UPSCOPE:
                scope.pop()
            elif token.kind is TokenKind.VAR:
                names[token.data.id_code] = ".".join([*scope, token.data.reference])
            elif token.kind is TokenKind.CHANGE_TIME:
                now = token.data
            elif token.kind in (TokenKind.CHANGE_SCALAR, TokenKind.CHANGE_VECTOR):
                name = names[token.data.id_code]
                changes.setdefault(name, []).append((now, str(token.data.value)))
    return timescale, changes


def test_the_hpet_periodic_line_toggles_at_the_programmed_period(tmp_path: Path) -> None:
    path = tmp_path / "hpet.vcd"
    result = subprocess.run([sys.executable, "-m", "emud", "run", str(IMAGES / "hpet_timers.elf"),
                             "--vcd", str(path)], capture_output=True, text=True, timeout=120,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    timescale, changes = read_vcd(path)
    assert timescale == 1
    initial, *line = changes["hpet.3"]  # timer 0, routed to line 3, level-triggered
    assert initial == (0, "0")  # $dumpvars: low at reset
    rises = [t for t, v in line if v == "1"]
    falls = [t for t, v in line if v == "0"]
    assert len(rises) >= 2 * (PERIODS - 1) and len(falls) == len(rises)
    # Each period the comparator fires and the guest clears the status (the line falls);
    # the line rises twice per period, 1 µs apart (a periodic timer re-arms at least
    # 1 µs after its last expiry, hpet.md): the pattern repeats every programmed period.
    assert {rises[i + 2] - rises[i] for i in range(len(rises) - 2)} == {PERIOD_NS}
    assert {falls[i + 2] - falls[i] for i in range(len(falls) - 2)} == {PERIOD_NS}
    # The line reaches the hart through the PLIC: cpu.mei rises with it.
    assert set(rises) <= {t for t, v in changes["cpu.mei"] if v == "1"}
    # UART bytes are an 8-bit signal: the guest's report, byte by byte.
    value = dict(changes["uart0.tx"])  # the byte at each time it changed
    byte, sent = "0", bytearray()
    for t, _ in changes["uart0.tx_strobe"]:
        byte = value.get(t, byte)
        sent.append(int(byte))
    text = sent.decode()
    assert text == result.stdout
