"""Reverse execution cost on counter.elf (runs forever): prints, for each history length,
reverse-stepi and reverse-continue latency and the checkpoints' memory, then forward
speed with recording off and on, for counter.elf and for compute.elf (a fast,
translated guest, where a checkpoint's cost weighs most).

    python bench/replay.py [--histories 1M,10M,100M]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from emud.chardev import RingBackend
from emud.cpu.debug import WATCH, Watchpoint
from emud.loader import load_elf
from emud.machine import SLICE, Machine
from emud.replay import Replay

IMAGES = Path(__file__).resolve().parent.parent / "images"
IMAGE = IMAGES / "counter.elf"


def machine(image: Path = IMAGE) -> Machine:
    m = Machine(RingBackend())
    m.load(load_elf(image))
    return m


def forward(insns: int, record: bool, image: Path = IMAGE) -> float:
    """Instructions per second over `insns` (or to the guest's exit), with or without
    recording."""
    m = machine(image)
    replay = Replay(m) if record else None
    start = time.perf_counter()
    while m.clock.icount < insns and m.exit_code is None:
        if replay is not None:
            replay.run_slice(SLICE)
        else:
            m.run_slice(SLICE)
    return m.clock.icount / (time.perf_counter() - start)


def history(insns: int) -> None:
    m = machine()
    replay = Replay(m)
    while m.clock.icount < insns:
        replay.run_slice(SLICE)
    start = time.perf_counter()
    replay.reverse_step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(10):
        replay.reverse_step()
    again = (time.perf_counter() - start) / 10
    counter = load_elf(IMAGE).symbols["counter"]
    m.hart.add_watchpoint(Watchpoint(counter, 4, WATCH))
    start = time.perf_counter()
    hit = replay.reverse_continue()
    rcont = time.perf_counter() - start
    assert hit is not None
    print(f"history {insns / 1e6:5.0f}M: reverse-stepi {first * 1e3:6.1f} ms (then "
          f"{again * 1e3:5.1f} ms), reverse-continue (watch) {rcont * 1e3:6.1f} ms, "
          f"checkpoints {len(replay.ring.items)} using {replay.ring.memory / 2**20:.1f} MiB")


def size(text: str) -> int:
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}
    return int(text[:-1]) * scale[text[-1]] if text[-1] in scale else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--histories", default="1M,10M,100M")
    parser.add_argument("--forward", type=size, default=size("20M"))
    args = parser.parse_args()
    for text in args.histories.split(","):
        history(size(text))
    for image in (IMAGE, IMAGES / "compute.elf"):
        off = max(forward(args.forward, False, image) for _ in range(3))
        on = max(forward(args.forward, True, image) for _ in range(3))
        print(f"forward {image.name}: {off / 1e6:.2f} MIPS recording off, {on / 1e6:.2f} "
              f"MIPS on ({(1 - on / off) * 100:+.1f}% cost, best of 3)")


if __name__ == "__main__":
    main()
