"""`emud run` argument handling and clear errors for bad images."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from emud.cli import parse_icount, parse_size


def emud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emud", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("text,size", [("16M", 16 << 20), ("128", 128 << 20), ("1G", 1 << 30),
                                       ("64K", 64 << 10), ("32MiB", 32 << 20)])
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "12x", "-1M", "3G", "1001K"])
def test_bad_memory_sizes_are_rejected(text: str) -> None:
    with pytest.raises(Exception, match="memory size"):
        parse_size(text)


def test_icount_syntax() -> None:
    assert parse_icount("shift=4") == 4
    with pytest.raises(Exception, match="icount"):
        parse_icount("shift=auto")


def test_missing_image() -> None:
    result = emud("run", "/nonexistent/x.elf")
    assert result.returncode == 1
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_not_an_elf(tmp_path: Path) -> None:
    bogus = tmp_path / "text.elf"
    bogus.write_text("hello")
    result = emud("run", str(bogus))
    assert result.returncode == 1 and "not an ELF file" in result.stderr


def test_host_elf_is_not_riscv() -> None:
    result = emud("run", shutil.which("true") or "/bin/true")
    assert result.returncode == 1
    assert "not a RISC-V ELF" in result.stderr


@pytest.mark.parametrize("cut", [20, 60, 200, 1000])
def test_truncated_elf(tmp_path: Path, cut: int) -> None:
    image = tmp_path / "cut.elf"
    image.write_bytes((IMAGES / "hello.elf").read_bytes()[:cut])
    result = emud("run", str(image))
    assert result.returncode == 1
    assert "corrupt ELF" in result.stderr or "no loadable segments" in result.stderr
    assert "Traceback" not in result.stderr


def test_segment_outside_ram(build_asm: Callable[..., Path]) -> None:
    image = build_asm(".globl _start\n_start: j _start\n.data\n.fill 0x20000, 1, 0xaa\n")
    result = emud("run", "-m", "64K", str(image))
    assert result.returncode == 1
    assert "outside RAM" in result.stderr


def test_serial_to_file(tmp_path: Path) -> None:
    out = tmp_path / "uart.txt"
    result = emud("run", "-serial", f"file:{out}", str(IMAGES / "hello.elf"))
    assert result.returncode == 0 and result.stdout == ""
    assert out.read_text() == "Hello from emud!\n"


def test_unknown_serial_backend() -> None:
    result = emud("run", "-serial", "pty", str(IMAGES / "hello.elf"))
    assert result.returncode == 1 and "unknown serial backend" in result.stderr
