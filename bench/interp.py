"""The interpreter (`--accel interp`) alone: MIPS per guest, best of N, CPU time.

    python bench/interp.py [--runs 3] [--insns 2000000] [--baseline DIR] [GUEST ...]

Guests are the committed images (a long one is cut at --insns instructions; a short
one is run again on a fresh machine until it has retired about --insns, so that
decoding cold code counts as it does in a real short run) and tight synthetic
loops assembled here with the cross toolchain (ALU, loads and stores, calls,
mul/div, CSR accesses, polling a device register: CLINT mtime).  Only the run is
timed: building the machine and loading the image are not.

With --baseline DIR (a checkout of another emud revision, e.g. made with
`git worktree add /tmp/base main`) every guest is measured A/B: the emud this
script imports (PYTHONPATH) and DIR's, each run in a child process of its own,
interleaved (A, B, A, B, ...) so that the load of a shared machine hits both
alike; the ratio is the first's speed over DIR's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"
# Committed images; those not built (yet) in this tree are left out of the default list.
IMAGE_GUESTS = ["compute", "counter", "traps", "hello", "hpet_timers", "uart_echo",
                "utasks", "pmp", "globals", "statemachine", "crypto", "compute_short"]
POWEROFF = """
    li t0, 0x100000
    li t1, 0x5555
    sw t1, 0(t0)
1:  j 1b
"""
# Tight loops: each runs LOOPS iterations (t6 counts down), data at 0x80040000, far
# from the code page, so stores never touch decoded code.
LOOPS = 40_000
SYNTHETIC: dict[str, str] = {
    "loop_alu": """
    li a0, 1
    li a1, 3
loop:
    add a2, a0, a1
    xor a3, a2, a0
    slli a4, a3, 3
    srli a5, a4, 2
    and a0, a5, a1
    or a1, a1, a2
    sub a1, a1, a0
    addi a0, a0, 7
    sltu a6, a0, a1
    srai a7, a1, 5
    addi t6, t6, -1
    bnez t6, loop
""",
    "loop_mem": """
    li s0, 0x80040000
loop:
    lw a0, 0(s0)
    addi a0, a0, 1
    sw a0, 0(s0)
    lbu a1, 5(s0)
    sb a1, 9(s0)
    lh a2, 12(s0)
    add a2, a2, a0
    sh a2, 12(s0)
    lw a3, 16(s0)
    sw a3, 20(s0)
    addi t6, t6, -1
    bnez t6, loop
""",
    "loop_call": """
    li sp, 0x80080000
    li a2, 2
loop:
    mv a0, t6
    call leaf
    addi t6, t6, -1
    bnez t6, loop
    j done
leaf:
    addi sp, sp, -16
    sw ra, 12(sp)
    andi a1, a0, 3
    blt a1, a2, 1f
    addi a0, a0, 1
1:  bge a0, a1, 2f
    xori a0, a0, 5
2:  lw ra, 12(sp)
    addi sp, sp, 16
    ret
done:
""",
    "loop_muldiv": """
    li a0, 123456789
    li a1, 1000003
loop:
    mul a2, a0, a1
    mulhu a3, a0, a1
    divu a4, a2, a1
    remu a5, a2, a1
    div a6, a2, a1
    rem a7, a2, a1
    add a0, a0, a3
    addi t6, t6, -1
    bnez t6, loop
""",
    "loop_mmio": """
    li s0, 0x0200BFF8
loop:
    lw a0, 0(s0)
    addi a1, a1, 1
    xor a2, a1, a0
    add a3, a3, a2
    addi t6, t6, -1
    bnez t6, loop
""",
    "loop_csr": """
loop:
    csrr a0, mcycle
    csrw mscratch, a0
    csrr a1, mscratch
    addi t6, t6, -1
    bnez t6, loop
""",
}


def synthetic_source(name: str) -> str:
    return f".globl _start\n_start:\n    li t6, {LOOPS}\n{SYNTHETIC[name]}{POWEROFF}"


def build_synthetic(name: str, directory: Path) -> Path:
    src, elf = directory / f"{name}.S", directory / f"{name}.elf"
    src.write_text(synthetic_source(name))
    subprocess.run(["riscv64-unknown-elf-gcc", "-march=rv32imac_zicsr", "-mabi=ilp32",
                    "-nostdlib", "-nostartfiles", "-Wl,-N", "-Wl,-Ttext=0x80000000",
                    "-Wl,--no-warn-rwx-segments", "-o", str(elf), str(src)], check=True)
    return elf


def measure(image: Path, insns: int) -> tuple[int, float]:
    """Retire about `insns` instructions of `image` under the interpreter: (count, CPU s).
    A guest that powers off sooner starts again on a fresh machine."""
    from emud.chardev import RingBackend
    from emud.loader import load_elf
    from emud.machine import Machine

    elf = load_elf(image)
    done, cpu = 0, 0.0
    while done < insns:
        machine = Machine(RingBackend(), accel="interp")
        machine.load(elf)
        start = time.process_time()
        machine.run_until_poweroff(insns - done)
        cpu += time.process_time() - start
        if machine.clock.icount == 0:
            raise SystemExit(f"{image}: no instruction retired")
        done += machine.clock.icount
    return done, cpu


def measure_in(tree: Path, image: Path, insns: int) -> tuple[int, float]:
    """measure() in a child process that imports emud from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, __file__, "--child", str(image), str(insns)],
                         env=env, check=True, capture_output=True, text=True).stdout
    count, cpu = json.loads(out)
    return int(count), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("guests", nargs="*", metavar="GUEST",
                        help="image names or synthetic loops (default: all)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--insns", type=int, default=2_000_000,
                        help="instructions per run (default 2000000)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="another emud checkout to compare with, interleaved")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), int(args.child[1]))))
        return
    names = args.guests or [g for g in IMAGE_GUESTS if (IMAGES / f"{g}.elf").exists()] + list(
        SYNTHETIC)
    spec = importlib.util.find_spec("emud")
    assert spec is not None and spec.origin is not None, "emud is not importable"
    ours_tree = Path(spec.origin).parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'guest':<14} {'insns':>9}  {'MIPS':>6}" + (
            f"  {'baseline':>8}  {'ratio':>5}" if args.baseline else ""))
        for name in names:
            image = (build_synthetic(name, Path(tmp)) if name in SYNTHETIC
                     else IMAGES / f"{name}.elf")
            ours: list[float] = []
            theirs: list[float] = []
            count = 0
            for _ in range(args.runs):
                if args.baseline:
                    count, cpu = measure_in(ours_tree, image, args.insns)
                    ours.append(count / cpu / 1e6)
                    count, cpu = measure_in(args.baseline.resolve(), image, args.insns)
                    theirs.append(count / cpu / 1e6)
                else:
                    count, cpu = measure(image, args.insns)
                    ours.append(count / cpu / 1e6)
            line = f"{name:<14} {count:>9}  {max(ours):6.2f}"
            if theirs:
                line += f"  {max(theirs):8.2f}  {max(ours) / max(theirs):5.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
