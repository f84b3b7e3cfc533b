"""Interpreter speed on the compute image: prints MIPS (best of N runs).

    python bench/mips.py [--runs 3] [--image images/compute.elf] [--accel interp|translate]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emud.chardev import RingBackend
from emud.loader import load_elf
from emud.machine import ACCELERATORS, Machine

ROOT = Path(__file__).resolve().parent.parent


def measure(image: Path, accel: str) -> tuple[int, float, str]:
    machine = Machine(RingBackend(), accel=accel)
    machine.load(load_elf(image))
    start = time.perf_counter()
    code = machine.run_until_poweroff()
    seconds = time.perf_counter() - start
    assert isinstance(machine.serial, RingBackend)
    if code != 0:
        raise SystemExit(f"{image} exited with {code}")
    return machine.clock.icount, seconds, machine.serial.read().decode().strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", type=Path, default=ROOT / "images" / "compute.elf")
    parser.add_argument("--accel", choices=ACCELERATORS, default="interp")
    args = parser.parse_args()
    results = [measure(args.image, args.accel) for _ in range(args.runs)]
    insns, best, last_line = min(results, key=lambda r: r[1])
    print(f"image: {args.image.name}  ({last_line})")
    print(f"instructions: {insns}")
    for n, (_, seconds, _) in enumerate(results, 1):
        print(f"run {n}: {seconds:.2f} s  {insns / seconds / 1e6:.2f} MIPS")
    print(f"best: {insns / best / 1e6:.2f} MIPS")


if __name__ == "__main__":
    main()
