"""`emud timeline FILE.json -o OUT.svg`: the picture of a recorded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import IMAGES, ROOT

SVG = "{http://www.w3.org/2000/svg}"


def emud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emud", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_render_the_hpet_timers_run(tmp_path: Path) -> None:
    trace, picture = tmp_path / "hpet.json", tmp_path / "hpet.svg"
    assert emud("run", str(IMAGES / "hpet_timers.elf"), "--trace-file", str(trace)).returncode == 0
    result = emud("timeline", str(trace), "-o", str(picture), "--end", "500")
    assert result.returncode == 0, result.stderr
    root = ET.parse(picture).getroot()
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert labels[0] == "hpet.json (0.51 to 500 µs of virtual time)"
    for lane in ("hpet.3", "cpu.mei", "hpet.timer0", "cpu", "uart0 tx"):
        assert lane in labels
    # The periodic line's waveform rises where the JSON says it does (within the window).
    rises = [e["ts"] for e in json.loads(trace.read_text())
             if e.get("name") == "hpet.3" and e["args"]["level"] == 1 and e["ts"] <= 500]
    lanes = [t for t in root.iter(f"{SVG}text") if t.get("x") == "8"][1:]
    row = [t.text for t in lanes].index("hpet.3")
    wave = [p for p in root.iter(f"{SVG}polyline")][row]
    ys = [float(xy.split(",")[1]) for xy in (wave.get("points") or "").split()]
    high, low = min(ys), max(ys)
    assert sum(1 for a, b in zip(ys, ys[1:], strict=False) if a == low and b == high) == len(rises)
    # The axis is in µs with round ticks.
    assert "µs" in labels and "100" in labels


def test_a_file_that_is_not_a_timeline_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = emud("timeline", str(bad), "-o", str(tmp_path / "out.svg"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"emud: cannot read {bad}: ") and result.stderr.count("\n") == 1
