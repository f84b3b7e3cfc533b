"""A plain `emud run` starts fast: it imports only what it uses and needs no event loop
(emud/foreground.py), yet behaves as the daemon did: input, SIGTERM, exit codes."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import emud
from conftest import IMAGES, ROOT

TIMEOUT = 30.0  # a safety net only: every wait below ends on output or the process's end
# Never needed by a run without gdb, QMP, -S, --daemonize, --record/--replay or a trace
# file; each costs a short run more start-up time than the run itself.
# Nor the API (cli builds the machine with emud.machine.build), TOML (the built-in board
# is data), dataclasses (each costs ~0.5 ms to define, their module ~5 ms) and inspect.
UNUSED = ("asyncio", "elftools", "emud.gdbserver", "emud.monitor", "emud.daemon",
          "emud.replay", "emud.snapshots", "emud.migration", "emud.timeline",
          "emud.timeline_render", "importlib.metadata", "sqlite3", "emud.api", "tomllib",
          "dataclasses", "inspect", "pkgutil")


def imported_by(argv: list[str]) -> tuple[int, set[str]]:
    """(exit code, modules imported) of emud.cli.main(argv) in a fresh interpreter."""
    script = ("import json, sys, emud.cli\n"
              f"code = emud.cli.main({argv!r})\n"
              "print(json.dumps([code, sorted(sys.modules)]))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    code, modules = json.loads(result.stdout.splitlines()[-1])
    return code, set(modules)


def unused(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in UNUSED))


def test_plain_run_imports_only_what_it_uses(tmp_path: Path) -> None:
    out = tmp_path / "uart.txt"
    code, modules = imported_by(["run", "-serial", f"file:{out}", str(IMAGES / "hello.elf")])
    assert code == 0 and out.read_text() == "Hello from emud!\n"
    assert unused(modules) == []
    assert "emud.foreground" in modules and "emud.cpu.translate" in modules


def test_interp_run_imports_no_translator(tmp_path: Path) -> None:
    code, modules = imported_by(["run", "--accel", "interp", "-serial", "null",
                                 str(IMAGES / "hello.elf")])
    assert code == 0 and unused(modules) == [] and "emud.cpu.codecache" not in modules


def test_a_control_plane_still_gets_the_daemon(tmp_path: Path) -> None:
    """The same image with a trace file (its daemon events): the event loop is there,
    and the API's Machine that serves it."""
    code, modules = imported_by(["run", "-serial", "null", "--trace-file",
                                 str(tmp_path / "t.json"), str(IMAGES / "hello.elf")])
    assert code == 0 and {"asyncio", "emud.daemon", "emud.timeline", "emud.api"} <= modules


def test_a_board_file_still_gets_tomllib(tmp_path: Path) -> None:
    """--board FILE is parsed as TOML; a plain run with it imports only that besides."""
    board = tmp_path / "board.toml"
    board.write_text((ROOT / "emud" / "boards" / "emud-virt.toml").read_text())
    code, modules = imported_by(["run", "-serial", "null", "--board", str(board),
                                 str(IMAGES / "hello.elf")])
    assert code == 0 and "tomllib" in modules
    assert unused(modules) == ["tomllib", "tomllib._parser", "tomllib._re", "tomllib._types"]


def test_a_bad_image_in_a_plain_run_is_one_line(tmp_path: Path) -> None:
    """Built without the API, a plain run still reports an image it cannot load as one
    line and status 1, as the API's ConfigError did."""
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"not an ELF file")
    result = subprocess.run([sys.executable, "-m", "emud", "run", "-serial", "null", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"emud: {bad}: ") and result.stderr.count("\n") == 1


def test_sigterm_ends_a_plain_run_that_waits_for_input() -> None:
    """uart_echo waits in WFI for input: SIGTERM ends the run with status 0 (the guest
    never powered off), as under the daemon, and what it wrote is all there."""
    proc = subprocess.Popen([sys.executable, "-m", "emud", "run", str(IMAGES / "uart_echo.elf")],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"echo: ready\n"
        proc.stdin.write(b"first\n")
        proc.stdin.flush()  # arrives while the guest sleeps: it wakes and echoes it
        assert proc.stdout.readline() == b"first\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == b"" and err == b""


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_a_plain_run_ends_at_once_with_everything_written(tmp_path: Path, accel: str) -> None:
    """`python -m emud run` ends without the interpreter's teardown (emud.cli.console),
    yet stdout (the UART), stderr (a -d log) and the exit code are those of a process
    that ends as usual, byte for byte."""
    argv = ["run", "--accel", accel, "--translation-cache", str(tmp_path), "-d", "in_asm",
            str(IMAGES / "hello.elf")]
    usual = f"import sys, emud.cli; sys.exit(emud.cli.main({argv!r}))"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(ROOT)  # buffered stdio, as in a shell pipeline
    ends = [subprocess.run(command, cwd=ROOT, capture_output=True, timeout=TIMEOUT, env=env,
                           stdin=subprocess.DEVNULL)
            for command in ([sys.executable, "-m", "emud", *argv], [sys.executable, "-c", usual])]
    at_once, as_usual = ends
    assert at_once.stdout == as_usual.stdout == b"Hello from emud!\n"
    assert at_once.stderr == as_usual.stderr and at_once.stderr.count(b"\n") > 10
    assert at_once.returncode == as_usual.returncode == 0


def test_version_is_pyproject_s() -> None:
    """emud.__version__ (--version, the translation cache's key) is the package's."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert emud.__version__ == tomllib.load(f)["project"]["version"]
    result = subprocess.run([sys.executable, "-m", "emud", "--version"], cwd=ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.stdout == f"emud {emud.__version__}\n"


def test_elf_reader_agrees_with_pyelftools() -> None:
    """The loader's own ELF32 reader (no pyelftools at start-up) finds what pyelftools
    finds in every guest image: entry, loadable segments at their physical addresses,
    and the symbols (functions, objects and labels, no "$x" mapping symbols)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    from emud.loader import load_elf

    images = sorted(IMAGES.glob("*.elf"))
    assert len(images) >= 10
    for path in images:
        image = load_elf(path)
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = [(s["p_paddr"], s.data(), s["p_memsz"]) for s in elf.iter_segments()
                        if s["p_type"] == "PT_LOAD" and s["p_memsz"]]
            symtab = elf.get_section_by_name(".symtab")
            assert isinstance(symtab, SymbolTableSection)
            symbols: dict[str, int] = {}
            for sym in symtab.iter_symbols():
                if (sym.name and not sym.name.startswith("$") and sym["st_info"]["type"]
                        in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")):
                    symbols.setdefault(sym.name, sym["st_value"])
            assert image.entry == elf["e_entry"], path
        assert [(s.addr, s.data, s.memsz) for s in image.segments] == segments, path
        assert image.symbols == symbols and "main" in symbols, path


@pytest.mark.parametrize("damage", ["class", "phdr-size", "phdr-beyond", "segment-beyond",
                                    "filesz", "symtab-link", "no-load"])
def test_corrupt_elf_is_one_line(tmp_path: Path, damage: str) -> None:
    """Each header field the reader trusts, made to point outside the file: one
    ImageError line naming the file, never an exception from inside the reader."""
    from emud.loader import EHDR, PHDR, SHDR, ImageError, load_elf

    raw = bytearray((IMAGES / "hello.elf").read_bytes())
    fields = list(EHDR.unpack_from(raw))
    phoff, shoff = fields[5], fields[6]
    if damage == "class":
        raw[4] = 7
    elif damage == "phdr-size":
        struct.pack_into("<H", raw, 42, 8)  # e_phentsize below a header's size
    elif damage == "phdr-beyond":
        struct.pack_into("<I", raw, 28, len(raw) - 10)  # e_phoff
    elif damage == "segment-beyond":
        struct.pack_into("<I", raw, phoff + PHDR.size + 4, len(raw))  # p_offset of the 2nd
    elif damage == "filesz":
        struct.pack_into("<I", raw, phoff + PHDR.size + 16, 1 << 30)  # p_filesz > p_memsz
    elif damage == "symtab-link":
        for n in range(fields[12]):
            if struct.unpack_from("<I", raw, shoff + n * SHDR.size + 4)[0] == 2:  # SYMTAB
                struct.pack_into("<I", raw, shoff + n * SHDR.size + 24, 999)  # sh_link
    elif damage == "no-load":
        for n in range(fields[10]):
            struct.pack_into("<I", raw, phoff + n * PHDR.size, 0)  # every p_type PT_NULL
    bad = tmp_path / "bad.elf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImageError) as error:
        load_elf(bad)
    text = str(error.value)
    assert text.startswith(f"{bad}: ") and "\n" not in text
    expected = "no loadable segments" if damage == "no-load" else "corrupt ELF: "
    assert expected in text, text


def test_ram_is_built_and_cleared_without_writing_it_and_compares_by_content() -> None:
    """RAM is an anonymous mapping (emud.memory.RamBuffer): zero until touched, cleared by
    the kernel, and equal to another RAM or bytes with the same content, as a bytearray."""
    from emud.memory import Ram

    a, b = Ram(0x8000_0000, 1 << 20), Ram(0x8000_0000, 1 << 20)
    assert a.data == b.data and a.data == bytes(1 << 20)
    a.u32[100] = 0xDEADBEEF
    a.data[5:9] = b"abcd"
    assert a.data != b.data and a.data[5:9] == b"abcd" and a.u8[400] == 0xEF
    b.data[:] = bytes(a.data)
    assert a.data == b.data
    a.clear()
    assert a.data == bytes(1 << 20) and a.u32[100] == 0 and a.data != b.data


def test_built_in_board_is_its_toml_file() -> None:
    """emud/boards/emud-virt.toml (the template users copy for --board) and the built-in
    board a run builds without TOML (emud.board.EMUD_VIRT) are the same board."""
    from emud.board import EMUD_VIRT, default_board, load_board

    path = ROOT / "emud" / "boards" / "emud-virt.toml"
    with open(path, "rb") as f:
        assert tomllib.load(f) == EMUD_VIRT
    assert load_board(path) == default_board()
