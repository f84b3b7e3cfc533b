from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

from emud.chardev import CharBackend, RingBackend
from emud.loader import load_elf
from emud.machine import Machine

ROOT = Path(__file__).resolve().parent.parent
# The suite never writes to the user's ~/.cache (the translation cache, README:
# Accelerators): this process and every emud it starts use a directory of their own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="emud-tests-cache-")
os.environ.pop("EMUD_TRANSLATION_CACHE", None)
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
# Property tests explore new inputs on every developer run, but CI (CI=true, as .ci/run
# is run) replays the same ones each time: a submission's verdict does not depend on luck.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
IMAGES = ROOT / "images"
MARCH = ["-march=rv32imac_zicsr_zifencei", "-mabi=ilp32"]
# Guest assembly for a trap handler: mcause, mepc and mtval into the three words at s0.
RECORD_TRAP = """
    csrr t0, mcause
    sw t0, 0(s0)
    csrr t0, mepc
    sw t0, 4(s0)
    csrr t0, mtval
    sw t0, 8(s0)
"""
# Guest assembly ending a self-checking guest through syscon: falling into it powers
# off with exit code 0; a branch to `fail` powers off with exit code 1.
# How long a QEMU or emud process started by a test may take to open its socket: a
# first start on a fresh machine (cold page cache, busy disk) has taken over 10 s.
START_TIMEOUT = 120.0
PASS_OR_FAIL = """
    li t0, 0x100000
    li t1, 0x5555
    sw t1, 0(t0)
fail:
    li t0, 0x100000
    li t1, 0x13333
    sw t1, 0(t0)
"""


async def wait_for_socket(proc: subprocess.Popen[bytes], path: str | Path) -> None:
    """Wait until `proc` has created the unix socket `path`; fail at once if it exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before "
                               f"creating {path}")
        if loop.time() > deadline:
            raise TimeoutError(f"process {proc.pid} did not create {path} in {START_TIMEOUT} s")
        await asyncio.sleep(0.05)


class Capture(CharBackend):
    """A serial backend that keeps what the UART transmits."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data

def boot(image: str | Path, **kwargs: int) -> Machine:
    """A machine with `image` loaded and a ring-buffer serial port."""
    machine = Machine(RingBackend(), **kwargs)
    machine.load(load_elf(image))
    return machine


def serial_text(machine: Machine) -> str:
    assert isinstance(machine.serial, RingBackend)
    return machine.serial.read().decode()


@pytest.fixture
def build_asm(tmp_path: Path) -> Callable[[str], Path]:
    """Assemble and link a bare-metal program (entry `_start` at 0x80000000)."""

    def build(source: str, name: str = "prog") -> Path:
        src = tmp_path / f"{name}.S"
        elf = tmp_path / f"{name}.elf"
        src.write_text(source)
        subprocess.run(
            ["riscv64-unknown-elf-gcc", *MARCH, "-nostdlib", "-nostartfiles", "-Wl,-N",
             "-Wl,-Ttext=0x80000000", "-Wl,--no-warn-rwx-segments", "-o", str(elf), str(src)],
            check=True,
        )
        return elf

    return build
