"""What each `-d` item and the timeline cost: MIPS with each on, against all off.

    python bench/logging_cost.py [--runs 3] [--insns 300000] [--image images/compute.elf]

Runs the first N instructions of the image per configuration and accelerator,
best of `--runs` by CPU time of this process, the log written to a file in a
temporary directory (as `-D FILE` does).  `exec` and `cpu` run the hart under the
interpreter one instruction at a time whatever the accelerator (they need every
block boundary), so their cost under `translate` includes losing the translator.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from emud import log
from emud.chardev import RingBackend
from emud.loader import load_elf
from emud.machine import Machine
from emud.timeline import Recorder

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["off", "in_asm", "exec", "cpu", "int", "guest_errors", "unimp", "--trace-file",
           "--vcd"]


def measure(image: Path, accel: str, config: str, insns: int, tmp: Path) -> float:
    """MIPS of one run of `insns` instructions with `config` on."""
    machine = Machine(RingBackend(), accel=accel)
    elf = load_elf(image)
    machine.load(elf)
    recorder = None
    log.symbolize = elf.symbolize
    log.set_file(str(tmp / "run.log"))
    if config == "--trace-file":
        recorder = Recorder(machine, json_path=str(tmp / "run.json"))
    elif config == "--vcd":
        recorder = Recorder(machine, vcd_path=str(tmp / "run.vcd"))
    elif config != "off":
        log.set_items({config})
    try:
        cpu = time.process_time()
        machine.run_until_poweroff(insns)
        cpu = time.process_time() - cpu
    finally:
        log.set_items(set())
        log.set_file(None)
        if recorder is not None:
            recorder.close()
    return machine.clock.icount / cpu / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--insns", type=int, default=300_000)
    parser.add_argument("--image", type=Path, default=ROOT / "images" / "compute.elf")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"image: {args.image.name}, first {args.insns} instructions, "
              f"best of {args.runs} (CPU time)")
        print(f"{'item':<14} {'interp MIPS':>12} {'cost':>7} {'translate MIPS':>15} {'cost':>7}")
        base: dict[str, float] = {}
        for config in CONFIGS:
            row = [f"{config:<14}"]
            for accel in ("interp", "translate"):
                mips = max(measure(args.image, accel, config, args.insns, Path(tmp))
                           for _ in range(args.runs))
                base.setdefault(accel, mips)
                cost = (1 - mips / base[accel]) * 100
                width = 12 if accel == "interp" else 15
                row.append(f"{mips:>{width}.2f} {cost:>6.1f}%")
            print(" ".join(row))


if __name__ == "__main__":
    main()
