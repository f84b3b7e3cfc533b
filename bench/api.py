"""The cost of the Python API: start-up and a snapshot round trip.

    python3 bench/api.py

1. From `import emud` to the first instruction retired, in a fresh interpreter (what a
   test suite pays per process): import, build the machine from an ELF, run one
   instruction.
2. A save()/load() round trip in memory through the API with 16 MiB of RAM.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "images" / "counter.elf"

STARTUP = f"""
import time
t0 = time.perf_counter()
import emud
m = emud.Machine({str(IMAGE)!r})
m.run(instructions=1)
print(time.perf_counter() - t0)
"""


def startup(runs: int = 5) -> float:
    """Best of `runs` fresh interpreters, in seconds."""
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True,
                             check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}).stdout
        times.append(float(out))
    return min(times)


def round_trip(runs: int = 20) -> tuple[float, float]:
    """Best save() and load() times in seconds, 16 MiB of RAM, after some guest work."""
    sys.path.insert(0, str(ROOT))
    import emud

    m = emud.Machine(IMAGE, ram="16M")
    m.run(instructions=50_000)
    saves, loads = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        snap = m.save()
        t1 = time.perf_counter()
        m.load(snap)
        t2 = time.perf_counter()
        saves.append(t1 - t0)
        loads.append(t2 - t1)
    return min(saves), min(loads)


def main() -> None:
    print(f"import emud -> first instruction: {startup() * 1e3:8.1f} ms (best of 5, fresh process)")
    save, load = round_trip()
    print(f"save() 16 MiB RAM:                {save * 1e3:8.1f} ms (best of 20)")
    print(f"load() 16 MiB RAM:                {load * 1e3:8.1f} ms (best of 20)")


if __name__ == "__main__":
    main()
