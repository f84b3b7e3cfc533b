"""Start-up time of `emud run`: a whole process against `python3 -c pass`.

    python3 bench/startup.py [-n RUNS] [IMAGE]

Each command runs RUNS times, interleaved (A, B, C, A, B, C, ...) so that load from
other processes on a shared machine spreads over all of them; the best wall time
and the best CPU time (user + system, of the child) are printed, and the ratio of
`emud run` to `python3 -c pass` (the goal is at most 2x).  The translation cache is
a directory of its own, warmed by the first run; `--translation-cache off` shows
what compiling the regions costs.  emud's modules are
byte-compiled first (as an installed package is), since an environment with
PYTHONDONTWRITEBYTECODE would otherwise compile every module on every start.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `argv`, output discarded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def byte_compile() -> None:
    """Compile emud's modules to bytecode now, as an installed package has them: with
    PYTHONDONTWRITEBYTECODE set, every process would compile the changed ones again."""
    for package in ("emud", "gdbstub", "shell"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", dest="runs", type=int, default=15, help="runs of each (15)")
    parser.add_argument("image", nargs="?", default="images/hello.elf")
    args = parser.parse_args()
    byte_compile()
    cache = tempfile.TemporaryDirectory(prefix="emud-bench-cache-")
    env = dict(os.environ, PYTHONPATH=str(ROOT), EMUD_TRANSLATION_CACHE=cache.name)
    python = sys.executable
    run = [python, "-m", "emud", "run"]
    commands = {
        "python3 -c pass": [python, "-c", "pass"],
        f"emud run {args.image}": [*run, args.image],
        "  ... --translation-cache off": [*run, "--translation-cache", "off", args.image],
        'python3 -c "import emud.cli"': [python, "-c", "import emud.cli"],
    }
    best = {name: (float("inf"), float("inf")) for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            wall, cpu = measure(argv, env)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    print(f"best of {args.runs} runs, interleaved        wall ms   CPU ms")
    for name, (wall, cpu) in best.items():
        print(f"  {name:<34} {wall * 1000:7.1f}  {cpu * 1000:7.1f}")
    base, emud = best["python3 -c pass"], best[f"emud run {args.image}"]
    print(f"  emud run / python3 -c pass: wall {emud[0] / base[0]:.2f}x, "
          f"CPU {emud[1] / base[1]:.2f}x (goal: at most 2x)")
    cache.cleanup()


if __name__ == "__main__":
    main()
