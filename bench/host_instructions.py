"""Host instructions of a whole `emud run`, interp against translate: speed that load does not blur.

    python bench/host_instructions.py [--only NAME[,NAME...]] [--jobs N]

On a shared machine CPU time moves by ±30% from one run to the next, which
hides the few percent a change to the translator makes.  Valgrind's cachegrind
(`--cache-sim=no`: it only counts) gives the number of host instructions a
process executes, the same on every run of the same code whatever else the
machine does.  For each guest (images/*.elf, as in bench/speed.py) this runs
`python -m emud run --accel A IMAGE -serial null` under it, for interp,
translate with an empty translation cache (cold), and translate again with
that cache filled (warm), and prints the counts in billions and the ratio
interp / translate: how many times fewer instructions translate needs.  Start-up
is included, as it is in a whole run (`python -c pass` is printed too).

It is a proxy: an instruction count ignores cache misses and branch
mispredictions, so a ratio here is not exactly a ratio of times, but it ranks
two versions of the translator reliably.  About 5 s of valgrind per million
guest instructions: the whole set takes a few minutes with --jobs 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from startup import byte_compile  # bench/startup.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ("compute", "globals", "statemachine", "crypto", "compute_short")
REFS = re.compile(rb"I\s+refs:\s+([\d,]+)")


def python() -> str:
    """The interpreter itself: valgrind must not count a wrapper script (pyenv's shims)."""
    return os.path.realpath(sys.executable)


def count(argv: list[str], env: dict[str, str]) -> int:
    """Host instructions of one process, which must exit 0."""
    result = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, check=False)
    found = REFS.search(result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"{' '.join(argv)}: exit {result.returncode}: "
                         f"{result.stderr.decode(errors='replace')[-400:]}")
    return int(found.group(1).replace(b",", b""))


def measure(name: str, env: dict[str, str]) -> dict[str, int]:
    """interp, cold and warm translate counts of one guest."""
    image = str(ROOT / "images" / f"{name}.elf")
    run = [python(), "-m", "emud", "run", image, "-serial", "null", "--accel"]
    cache = tempfile.mkdtemp(prefix="emud-ir-")
    try:
        warm_env = {**env, "XDG_CACHE_HOME": cache}
        return {"interp": count([*run, "interp"], env),
                "cold": count([*run, "translate"], warm_env),  # fills the cache
                "warm": count([*run, "translate"], warm_env)}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated guest names")
    parser.add_argument("--jobs", type=int, default=2, help="guests measured at once")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    names = args.only.split(",") if args.only else list(GUESTS)
    byte_compile()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("EMUD_TRANSLATION_CACHE", None)
    base = count([python(), "-c", "pass"], env)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(names, pool.map(lambda n: measure(n, env), names), strict=True))
    print(f"host instructions, billions (python -c pass: {base / 1e9:.3f})")
    print(f"{'guest':15s} {'interp':>8s} {'cold':>8s} {'warm':>8s} {'ratio cold':>11s} "
          f"{'ratio warm':>11s}")
    for name, r in results.items():
        print(f"{name:15s} {r['interp'] / 1e9:8.3f} {r['cold'] / 1e9:8.3f} {r['warm'] / 1e9:8.3f} "
              f"{r['interp'] / r['cold']:10.2f}x {r['interp'] / r['warm']:10.2f}x")


if __name__ == "__main__":
    main()
