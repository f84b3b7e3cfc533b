"""Speed on the cases of issue 13, interp against translate, and the issue's goals met or not.

    python bench/speed.py [--runs 3] [--quick] [--only NAME[,NAME...]] [--cold-cache]

For each guest (images/*.elf, README: Benchmarks) and accelerator:
- in process: MIPS by CPU time of `Machine.run_until_poweroff` (translation
  included), best of --runs; for translate also with a warm translation cache
  (a first run in a temporary directory fills it), as a test suite that runs an
  image again through `emud.Machine` has it;
- whole process: `python -m emud run --accel X IMAGE -serial null`, MIPS by the
  child's CPU time (user + sys) and by wall time, best of --runs; the
  instruction count is the in-process one (a run to power-off is deterministic);
  emud's modules are byte-compiled first, as an installed package has them.
Then start-up (wall time of `python -c pass` against `emud run images/hello.elf`,
best of 5), and the cost of one breakpoint at a pc that never runs and of one
write watchpoint on a page the guest never touches (compute_short in process,
CPU time). Then the goals, each with the figure it is judged on.

Runs of A and B alternate (A, B, A, B) so that load from others hits both.
--cold-cache gives every (guest, accelerator) of the whole-process runs a fresh
XDG_CACHE_HOME: its first run is cold (no persistent translation cache), the
others warm; both are printed. --only takes guest names and the sections
`startup` and `breakpoint`.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from startup import byte_compile  # bench/startup.py, beside this script

from emud.chardev import RingBackend
from emud.cpu.codecache import CodeCache
from emud.cpu.debug import WATCH, Watchpoint
from emud.loader import load_elf
from emud.machine import ACCELERATORS, Machine

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "images"

# name -> what it exhibits
GUESTS = {
    "compute": "CRC-32, quicksort, matrix multiply (its LCG state is on a code page)",
    "globals": "PRNG seed and counters stored on the code page",
    "statemachine": "384-case switch: hundreds of blocks, each run a few hundred times",
    "crypto": "ChaCha20 + SHA-256: long straight arithmetic",
    "compute_short": "compute with 6 iterations: a 3M-instruction run",
}
SECTIONS = ("startup", "breakpoint")
BREAK_GUEST = "compute_short"
# RAM the guests never touch (they live in the first 1 MiB of the default 16 MiB)
UNTOUCHED = 0x8080_0000

EMUD = [sys.executable, "-m", "emud"]


def image(name: str) -> Path:
    return IMAGES / f"{name}.elf"


# --- measurements ---------------------------------------------------------------------------

Setup = Callable[[Machine], None]


def in_process(path: Path, accel: str, setup: Setup | None = None,
               cache: CodeCache | None = None) -> tuple[int, float]:
    """Instructions and CPU seconds of one run to power-off (`cache`: the translator's
    persistent cache; None, as for `emud.machine.Machine`, compiles every region)."""
    machine = Machine(RingBackend(), accel=accel, translation_cache=cache)
    machine.load(load_elf(path))
    if setup is not None:
        setup(machine)
    cpu = time.process_time()
    code = machine.run_until_poweroff()
    cpu = time.process_time() - cpu
    if code != 0:
        raise SystemExit(f"{path.name} ({accel}) exited with {code}")
    return machine.clock.icount, cpu


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole_process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """CPU seconds (user + sys) and wall seconds of one subprocess, which must exit 0."""
    cpu, wall = children_cpu(), time.perf_counter()
    result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, timeout=600, check=False)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {result.returncode}: "
                         f"{result.stderr.decode(errors='replace').strip()}")
    return cpu, wall


def emud_run(path: Path, accel: str) -> list[str]:
    return [*EMUD, "run", "--accel", accel, str(path), "-serial", "null"]


@contextmanager
def cache_dirs(cold: bool) -> Iterator[Callable[[], dict[str, str] | None]]:
    """A factory of subprocess environments: with `cold`, each has a fresh XDG_CACHE_HOME."""
    with tempfile.TemporaryDirectory(prefix="emud-speed-") as top:
        serial = iter(range(1_000_000))

        def fresh() -> dict[str, str] | None:
            if not cold:
                return None
            path = Path(top) / str(next(serial))
            path.mkdir()
            return {**os.environ, "XDG_CACHE_HOME": str(path)}
        yield fresh


# --- results --------------------------------------------------------------------------------

@dataclass
class Guest:
    name: str
    insns: int = 0
    cpu: dict[str, float] = field(default_factory=dict)           # in process, best
    warm: float = float("inf")  # in process, translate with a warm translation cache, best
    whole_cpu: dict[str, float] = field(default_factory=dict)     # best (warm with --cold-cache)
    whole_wall: dict[str, float] = field(default_factory=dict)
    cold_cpu: dict[str, float] = field(default_factory=dict)      # first run, --cold-cache
    cold_wall: dict[str, float] = field(default_factory=dict)

    def mips(self, seconds: float) -> float:
        return self.insns / seconds / 1e6


def measure_guest(name: str, runs: int, fresh_env: Callable[[], dict[str, str] | None],
                  cold: bool) -> Guest:
    g = Guest(name)
    path = image(name)
    with tempfile.TemporaryDirectory(prefix="emud-speed-") as directory:
        cache = CodeCache(directory)
        in_process(path, "translate", cache=cache)  # fills it: a test suite's first run
        for _ in range(runs):
            for accel in ACCELERATORS:
                g.insns, cpu = in_process(path, accel)
                g.cpu[accel] = min(cpu, g.cpu.get(accel, cpu))
            cpu = in_process(path, "translate", cache=cache)[1]
            g.warm = min(cpu, g.warm)
    envs = {accel: fresh_env() for accel in ACCELERATORS}
    for run in range(runs):
        for accel in ACCELERATORS:
            cpu, wall = whole_process(emud_run(path, accel), envs[accel])
            if cold and run == 0:
                g.cold_cpu[accel], g.cold_wall[accel] = cpu, wall
                continue
            g.whole_cpu[accel] = min(cpu, g.whole_cpu.get(accel, cpu))
            g.whole_wall[accel] = min(wall, g.whole_wall.get(accel, wall))
    return g


def print_guests(guests: list[Guest], runs: int, cold: bool) -> None:
    interp, trans = ACCELERATORS
    print(f"In process: MIPS by CPU time, best of {runs}; warm: translate with a "
          "translation cache that a first run filled (emud.Machine's default)")
    print(f"  {'guest':<14}{'insns':>10}  {interp:>7} {trans:>9}  ratio  {'warm':>7}  ratio")
    for g in guests:
        print(f"  {g.name:<14}{g.insns:>10}  {g.mips(g.cpu[interp]):7.2f} "
              f"{g.mips(g.cpu[trans]):9.2f}  {g.cpu[interp] / g.cpu[trans]:5.2f}x"
              f"  {g.mips(g.warm):7.2f}  {g.cpu[interp] / g.warm:5.2f}x")
    print()
    warm = f"warm, best of {runs - 1}" if cold else f"best of {runs}"
    print("Whole process (python -m emud run --accel X IMAGE -serial null): "
          f"MIPS by the child's CPU time and by wall time, {warm}")
    print(f"  {'guest':<14}{interp + ' cpu':>11} {trans + ' cpu':>14}  ratio"
          f"  {interp + ' wall':>11} {trans + ' wall':>14}")
    for g in guests:
        print(f"  {g.name:<14}{g.mips(g.whole_cpu[interp]):11.2f} "
              f"{g.mips(g.whole_cpu[trans]):14.2f}  "
              f"{g.whole_cpu[interp] / g.whole_cpu[trans]:5.2f}x"
              f"  {g.mips(g.whole_wall[interp]):11.2f} {g.mips(g.whole_wall[trans]):14.2f}")
    if cold:
        print("  cold (the first run, empty XDG_CACHE_HOME):")
        for g in guests:
            print(f"  {g.name:<14}{g.mips(g.cold_cpu[interp]):11.2f} "
                  f"{g.mips(g.cold_cpu[trans]):14.2f}  "
                  f"{g.cold_cpu[interp] / g.cold_cpu[trans]:5.2f}x"
                  f"  {g.mips(g.cold_wall[interp]):11.2f} {g.mips(g.cold_wall[trans]):14.2f}")
    print()


# --- start-up, breakpoint -------------------------------------------------------------------

def startup(runs: int) -> tuple[float, float]:
    """Best wall seconds of `python -c pass` and of `emud run images/hello.elf`."""
    python, emud = float("inf"), float("inf")
    for _ in range(runs):
        python = min(python, whole_process([sys.executable, "-c", "pass"])[1])
        emud = min(emud, whole_process([*EMUD, "run", str(image("hello"))])[1])
    print(f"Start-up, wall, best of {runs}: python -c pass {python * 1e3:.0f} ms, "
          f"emud run images/hello.elf {emud * 1e3:.0f} ms ({emud / python:.2f}x)")
    print()
    return python, emud


def break_nowhere(machine: Machine) -> None:
    """A breakpoint where the guest never goes: its trap handler (it takes no trap)."""
    assert machine.image is not None
    machine.hart.set_breakpoint(machine.image.symbols["trap_handler"], True)


def watch_elsewhere(machine: Machine) -> None:
    machine.hart.add_watchpoint(Watchpoint(UNTOUCHED, 4, WATCH))


DEBUG_CASES: dict[str, Setup | None] = {
    "none": None, "breakpoint": break_nowhere, "watchpoint": watch_elsewhere}


def debug_cost(runs: int) -> dict[str, dict[str, float]]:
    """CPU seconds (best) per accelerator and case; the cases alternate."""
    best: dict[str, dict[str, float]] = {accel: {} for accel in ACCELERATORS}
    for _ in range(runs):
        for accel in ACCELERATORS:
            for case, setup in DEBUG_CASES.items():
                cpu = in_process(image(BREAK_GUEST), accel, setup)[1]
                best[accel][case] = min(cpu, best[accel].get(case, cpu))
    print(f"Debugging cost ({BREAK_GUEST} in process, CPU time, best of {runs}): "
          f"breakpoint at trap_handler (never run), write watchpoint at {UNTOUCHED:#x}")
    for accel, cases in best.items():
        base = cases["none"]
        print(f"  {accel:<10} none {base:.2f} s, breakpoint {cases['breakpoint']:.2f} s "
              f"({cost(cases, 'breakpoint'):+.0f}%), watchpoint {cases['watchpoint']:.2f} s "
              f"({cost(cases, 'watchpoint'):+.0f}%)")
    print()
    return best


def cost(cases: dict[str, float], case: str) -> float:
    return (cases[case] / cases["none"] - 1) * 100


# --- goals ----------------------------------------------------------------------------------

def print_goals(guests: dict[str, Guest], start: tuple[float, float] | None,
                debug: dict[str, dict[str, float]] | None) -> None:
    interp, trans = ACCELERATORS
    rows: list[tuple[str, str, bool | None]] = []

    def worst(values: dict[str, float], low: bool = True) -> tuple[str, float]:
        name = (min if low else max)(values, key=values.__getitem__)
        return name, values[name]

    if guests:
        ratios = {n: g.cpu[interp] / g.cpu[trans] for n, g in guests.items()}
        whole = {n: g.whole_cpu[interp] / g.whole_cpu[trans] for n, g in guests.items()}
        name, r = worst(ratios)
        wname, wr = worst(whole)
        rows.append(("no guest slower translated than interpreted",
                     f"lowest translate/interp {r:.2f}x in process ({name}), "
                     f"{wr:.2f}x whole process ({wname})", r >= 1 and wr >= 1))
        rows.append(("every bench guest >= 2x the interpreter (in process)",
                     f"lowest {r:.2f}x ({name})", r >= 2))
        name, r = worst({n: g.cpu[interp] / g.warm for n, g in guests.items()})
        rows.append(("(the same, warm translation cache)", f"lowest {r:.2f}x ({name})",
                     r >= 2))
        slowest = {n: g.mips(g.cpu[interp]) for n, g in guests.items()}
        name, m = worst(slowest)
        rows.append(("the interpreter never below 5 MIPS (in process)",
                     f"lowest {m:.2f} MIPS ({name})", m >= 5))
    else:
        rows.append(("guest goals", "no guest measured (--only)", None))
    if "compute" in guests:
        g = guests["compute"]
        m = g.mips(g.cpu[trans])
        rows.append(("compute.elf whole run >= 30 MIPS (translate, in process)",
                     f"{m:.2f} MIPS", m >= 30))
    if BREAK_GUEST in guests:
        g = guests[BREAK_GUEST]
        m = g.mips(g.whole_cpu[trans])
        rows.append(("a 3M-instruction run >= 12 MIPS whole process "
                     f"({BREAK_GUEST}, translate, CPU)", f"{m:.2f} MIPS", m >= 12))
    if start is not None:
        python, emud = start
        rows.append(("emud run images/hello.elf within 2x of python -c pass (wall)",
                     f"{emud / python:.2f}x", emud <= 2 * python))
    if debug is not None:
        c = cost(debug[trans], "breakpoint")
        rows.append(("one breakpoint set costs <= 10% (translate)", f"{c:+.1f}%", c <= 10))
        rows.append(("(no goal) one watchpoint on an untouched page (translate)",
                     f"{cost(debug[trans], 'watchpoint'):+.1f}%", None))
    print("Goals (issue 13):")
    for goal, value, met in rows:
        verdict = "-" if met is None else "met" if met else "NOT MET"
        print(f"  {verdict:<8} {goal}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one run per figure (two with --cold-cache), start-up best of 3")
    parser.add_argument("--only", metavar="NAME[,NAME...]",
                        help=f"only these of: {', '.join([*GUESTS, *SECTIONS])}")
    parser.add_argument("--cold-cache", action="store_true",
                        help="a fresh XDG_CACHE_HOME per guest and accelerator for the "
                             "whole-process runs; print cold and warm figures")
    args = parser.parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):  # a long run shows each table as it ends
        sys.stdout.reconfigure(line_buffering=True)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = 1 if args.quick else args.runs
    if args.cold_cache:
        runs = max(runs, 2)  # one cold, at least one warm
    wanted = [*GUESTS, *SECTIONS]
    if args.only:
        wanted = [n.strip() for n in args.only.split(",")]
        unknown = [n for n in wanted if n not in GUESTS and n not in SECTIONS]
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)} "
                         f"(choose from {', '.join([*GUESTS, *SECTIONS])})")

    byte_compile()  # whole-process figures must not include compiling emud's modules
    print("Guests:")
    for name in (n for n in GUESTS if n in wanted):
        print(f"  {name + '.elf':<19} {GUESTS[name]}")
    print()
    guests: dict[str, Guest] = {}
    with cache_dirs(args.cold_cache) as fresh:
        for name in (n for n in GUESTS if n in wanted):
            guests[name] = measure_guest(name, runs, fresh, args.cold_cache)
    if guests:
        print_guests(list(guests.values()), runs, args.cold_cache)
    start = startup(3 if args.quick else max(runs, 5)) if "startup" in wanted else None
    debug = debug_cost(runs) if "breakpoint" in wanted else None
    print_goals(guests, start, debug)


if __name__ == "__main__":
    main()
