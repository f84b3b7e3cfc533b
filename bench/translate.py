"""Interpreter vs translator: MIPS on guest images, whole run and a short run.

    python bench/translate.py [--runs 3] [--image images/compute.elf ...] [--short 3000000]

Prints the best of N runs for each accelerator, by CPU time of this process
(what the emulator itself costs, whatever else runs on the machine) and by
wall-clock time, and translate's speed-up over the interpreter.  The runs
alternate between the accelerators, so that a change in the machine's load
hits both.  Translation (compile()) happens inside the timed runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emud.chardev import RingBackend
from emud.loader import load_elf
from emud.machine import ACCELERATORS, Machine

ROOT = Path(__file__).resolve().parent.parent


def measure(image: Path, accel: str, max_insns: int | None) -> tuple[int, float, float]:
    machine = Machine(RingBackend(), accel=accel)
    machine.load(load_elf(image))
    cpu, wall = time.process_time(), time.perf_counter()
    code = machine.run_until_poweroff(max_insns)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if max_insns is None and code != 0:
        raise SystemExit(f"{image} exited with {code}")
    return machine.clock.icount, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", type=Path, action="append",
                        help="a guest (repeatable; default images/compute.elf)")
    parser.add_argument("--short", type=int, default=3_000_000, metavar="N",
                        help="instructions of the short run (default 3000000)")
    args = parser.parse_args()
    for image in args.image or [ROOT / "images" / "compute.elf"]:
        print(f"image: {image.name}")
        for label, limit in (("whole run", None), (f"short run ({args.short} insns)", args.short)):
            results: dict[str, list[tuple[int, float, float]]] = {a: [] for a in ACCELERATORS}
            for _ in range(args.runs):
                for accel in ACCELERATORS:
                    results[accel].append(measure(image, accel, limit))
            mips = {}
            for accel, runs in results.items():
                insns = runs[0][0]
                cpu = min(r[1] for r in runs)
                wall = min(r[2] for r in runs)
                mips[accel] = insns / cpu / 1e6
                print(f"{label:>28}  {accel:<9} {insns:>9} insns  "
                      f"{mips[accel]:6.2f} MIPS (cpu {cpu:.2f} s)  "
                      f"{insns / wall / 1e6:6.2f} MIPS (wall {wall:.2f} s)")
            print(f"{'':>28}  translate/interp x{mips['translate'] / mips['interp']:.2f} (cpu)")


if __name__ == "__main__":
    main()
