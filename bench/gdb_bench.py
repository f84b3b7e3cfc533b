"""gdb round trips: median `stepi` latency and memory-read throughput through a real
gdb-multiarch, against emud and against qemu-system-riscv32 (-M virt -s -S).

    python bench/gdb_bench.py [--steps N] [--kib N] [--rounds N] [--osabi-none]
    python bench/gdb_bench.py --watchpoints N [--watch-length BYTES]

`--watchpoints N` times N `Z2` packets (write watchpoints of BYTES bytes starting
at distinct RAM words) sent raw to emud's gdb port, one at a time, then the `D` that removes them
all; only emud is measured (gdb's own bookkeeping would hide the stub's cost).

Both targets run the same small loop (built here with the cross toolchain: it
touches no device, so it behaves the same on QEMU's virt board); the same gdb
script (connect, N x stepi, then read RAM with `inferior.read_memory`) drives
both.  Each round starts fresh processes; the figures are medians over rounds
(memory-read throughput on a loaded host is bimodal, for both targets).

Debian's gdb-multiarch assumes the GNU/Linux OS ABI unless the target says
otherwise: emud's target.xml says `osabi none`, so gdb steps with `s`; QEMU's
does not, so gdb steps QEMU with a temporary breakpoint and `c`.
`--osabi-none` makes gdb step QEMU with `s` too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = """
.globl _start
_start:
    li t0, 0
1:  addi t0, t0, 1
    xor t1, t1, t0
    slli t2, t1, 3
    j 1b
"""

# Runs inside gdb's Python; prints one JSON line.
GDB_SCRIPT = """
import json, statistics, time
import gdb
gdb.execute("set confirm off")
gdb.execute("set pagination off")
{prelude}
gdb.execute("target remote {address}")
for _ in range(20):  # warm-up
    gdb.execute("stepi", to_string=True)
times = []
for _ in range({steps}):
    t = time.perf_counter()
    gdb.execute("stepi", to_string=True)
    times.append(time.perf_counter() - t)
inferior = gdb.selected_inferior()
size = {kib} * 1024
best = None
for rep in range(3):
    t = time.perf_counter()
    inferior.read_memory(0x80000000 + rep * size, size)
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print("RESULT " + json.dumps({{"stepi_ms": statistics.median(times) * 1e3,
                              "read_mib_s": size / best / 2**20}}))
gdb.execute("detach")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def build_loop(directory: Path) -> Path:
    src, elf = directory / "loop.S", directory / "loop.elf"
    src.write_text(LOOP)
    subprocess.run(["riscv64-unknown-elf-gcc", "-march=rv32imac", "-mabi=ilp32", "-nostdlib",
                    "-Wl,-N", "-Wl,--no-warn-rwx-segments", "-Wl,-Ttext=0x80000000",
                    "-o", str(elf), str(src)], check=True)
    return elf


def run_gdb(image: Path, port: int, steps: int, kib: int, osabi_none: bool) -> dict[str, float]:
    prelude = 'gdb.execute("set osabi none")' if osabi_none else ""
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(GDB_SCRIPT.format(address=f"127.0.0.1:{port}", steps=steps, kib=kib,
                                       prelude=prelude))
        script.flush()
        out = subprocess.run(["gdb-multiarch", "-nx", "-q", "-batch", "-x", script.name,
                              str(image)], capture_output=True, text=True, timeout=600)
    match = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if not match:
        raise RuntimeError(out.stdout + out.stderr)
    return dict(json.loads(match.group(1)))


@contextlib.contextmanager
def emud_gdb_port(image: Path) -> Iterator[int]:
    """A paused `emud run IMAGE` serving gdb on a free loopback port, ended afterwards."""
    proc = subprocess.Popen([sys.executable, "-m", "emud", "run", str(image), "-S",
                             "--gdb", "tcp:127.0.0.1:0", "-serial", "null"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        match = re.search(r"listening on tcp:127\.0\.0\.1:(\d+)", proc.stderr.readline())
        if not match:
            raise RuntimeError("emud did not start its gdb server")
        yield int(match.group(1))
    finally:
        proc.terminate()
        proc.wait()


def bench_emud(image: Path, steps: int, kib: int, osabi_none: bool) -> dict[str, float]:
    with emud_gdb_port(image) as port:
        return run_gdb(image, port, steps, kib, osabi_none)


def bench_qemu(image: Path, steps: int, kib: int, osabi_none: bool) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen(["qemu-system-riscv32", "-M", "virt", "-bios", "none", "-nographic",
                             "-monitor", "none", "-serial", "null", "-kernel", str(image),
                             "-gdb", f"tcp:127.0.0.1:{port}", "-S"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        return run_gdb(image, port, steps, kib, osabi_none)
    finally:
        proc.terminate()
        proc.wait()


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    checksum = sum(payload) & 0xFF
    sock.sendall(b"$%s#%02x" % (payload, checksum))
    reply = b""
    while not re.search(rb"\$[^#]*#..", reply):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("emud closed the connection")
        reply += chunk
    return reply


def bench_watchpoints(count: int, length: int) -> None:
    with emud_gdb_port(ROOT / "images" / "counter.elf") as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _exchange(sock, b"QStartNoAckMode")
        sock.sendall(b"+")
        t = time.perf_counter()
        for i in range(count):
            if b"OK" not in _exchange(sock, b"Z2,%x,%x" % (0x80080000 + 4 * i, length)):
                raise RuntimeError("a watchpoint was refused")
        inserted = time.perf_counter() - t
        t = time.perf_counter()
        _exchange(sock, b"D")
        detached = time.perf_counter() - t
    print(f"{count} watchpoints of {length} bytes: insert {inserted:.3f} s "
          f"({inserted / count * 1e3:.2f} ms each), detach {detached:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kib", type=int, default=1024, help="KiB per memory read")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--osabi-none", action="store_true",
                        help="`set osabi none` in gdb, so QEMU is stepped with `s` too")
    parser.add_argument("--watchpoints", type=int, metavar="N",
                        help="time inserting N watchpoints and the detach that removes them")
    parser.add_argument("--watch-length", type=lambda text: int(text, 0), default=4,
                        metavar="BYTES", help="the length of each watchpoint (default 4)")
    args = parser.parse_args()
    if args.watchpoints:
        bench_watchpoints(args.watchpoints, args.watch_length)
        return
    targets = [("emud", bench_emud)]
    if shutil.which("qemu-system-riscv32"):
        targets.append(("qemu", bench_qemu))
    with tempfile.TemporaryDirectory() as tmp:
        image = build_loop(Path(tmp))
        print(f"{'target':8} {'stepi median':>14} {'memory read':>14}")
        for name, bench in targets:
            rounds = [bench(image, args.steps, args.kib, args.osabi_none)
                      for _ in range(args.rounds)]
            stepi = statistics.median(r["stepi_ms"] for r in rounds)
            read = statistics.median(r["read_mib_s"] for r in rounds)
            print(f"{name:8} {stepi:11.3f} ms {read:9.1f} MiB/s")


if __name__ == "__main__":
    main()
