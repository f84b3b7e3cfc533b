"""The committed guest images run to their expected output, in-process and via the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import emud
from conftest import IMAGES, ROOT


def test_hello_prints_and_powers_off() -> None:
    m = emud.Machine(IMAGES / "hello.elf")
    assert m.run().exit_code == 0
    assert m.uart.read() == b"Hello from emud!\n"


def test_traps_are_precise() -> None:
    m = emud.Machine(IMAGES / "traps.elf")
    assert m.run().exit_code == 0
    out = m.uart.read().decode()
    for line in ("ecall: mcause=11 mepc_ok=1", "illegal: mcause=2 mepc_ok=1",
                 "misaligned load: mcause=4 mepc_ok=1 mtval_ok=1",
                 "misaligned store: mcause=6 mepc_ok=1 mtval_ok=1",
                 "ebreak: mcause=3 mepc_ok=1", "load fault: mcause=5 mepc_ok=1 mtval_ok=1",
                 "store fault: mcause=7 mepc_ok=1 mtval_ok=1", "msi: ok", "traps: all ok"):
        assert line in out.splitlines()


HOST_SHIM = """
#include <stdint.h>
#include <stdio.h>
static inline void uart_putc(char c) { putchar(c); }
static inline void uart_puts(const char *s) { fputs(s, stdout); }
static inline void uart_puthex(uint32_t v) { printf("%08x", (unsigned)v); }
static inline void uart_putdec(uint32_t v) { printf("%u", (unsigned)v); }
"""


def test_compute_output_matches_the_same_source_built_for_the_host(tmp_path: Path) -> None:
    """The oracle is the host CPU: compute.c built natively must print the same lines."""
    shutil.copy(IMAGES / "compute.c", tmp_path / "compute.c")
    (tmp_path / "emud.h").write_text(HOST_SHIM)
    subprocess.run(["gcc", "-O1", "-o", str(tmp_path / "compute"), str(tmp_path / "compute.c")],
                   check=True)
    expected = subprocess.run([str(tmp_path / "compute")], capture_output=True, text=True,
                              check=True).stdout
    m = emud.Machine(IMAGES / "compute.elf")
    assert m.run().exit_code == 0
    assert m.uart.read().decode() == expected
    assert "compute: checksum=" in expected


def test_compute_is_deterministic_in_icount_mode() -> None:
    runs = []
    for _ in range(2):
        m = emud.Machine(IMAGES / "hello.elf", icount=3)
        m.run()
        runs.append((m.icount, m.now_ns, m.regs.as_dict(), m.read(m.symbols["_start"],
                                                                  0x10000)))
    assert runs[0] == runs[1]
    assert runs[0][1] == runs[0][0] << 3


def test_cli_runs_hello_with_exit_code() -> None:
    result = subprocess.run([sys.executable, "-m", "emud", "run", str(IMAGES / "hello.elf")],
                            capture_output=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert result.stdout == b"Hello from emud!\n"
