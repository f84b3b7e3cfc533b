"""bench/speed.py's guests print the right results, and both accelerators agree on them.

The oracles are independent of emud: globals.c, statemachine.c and compute.c
built for the host CPU (as tests/test_images.py does for compute), and for
crypto.c Python's hashlib with a ChaCha20 written here from RFC 8439.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from test_images import HOST_SHIM
from test_translate import both, until_poweroff

from conftest import IMAGES, ROOT, boot, serial_text
from emud.loader import load_elf

PAGE = 4096


def host_output(tmp_path: Path, source: str, *defines: str) -> str:
    """What `source` prints when built for the host with the UART calls on stdout."""
    shutil.copy(IMAGES / source, tmp_path / source)
    (tmp_path / "emud.h").write_text(HOST_SHIM)
    exe = tmp_path / "guest"
    subprocess.run(["gcc", "-O1", *(f"-D{d}" for d in defines), "-o", str(exe),
                    str(tmp_path / source)], check=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def guest_output(image: str) -> str:
    machine = boot(IMAGES / image)
    assert machine.run_until_poweroff() == 0
    return serial_text(machine)


@pytest.mark.parametrize(("image", "source", "defines", "last"), [
    ("globals.elf", "globals.c", (), "globals: checksum="),
    ("statemachine.elf", "statemachine.c", (), "statemachine: checksum="),
    ("compute_short.elf", "compute.c", ("ITERATIONS=6",), "compute: checksum="),
])
def test_guest_prints_what_the_host_build_prints(tmp_path: Path, image: str, source: str,
                                                 defines: tuple[str, ...], last: str) -> None:
    expected = host_output(tmp_path, source, *defines)
    assert expected.splitlines()[-1].startswith(last)
    assert guest_output(image) == expected


def test_globals_are_stored_on_the_page_of_the_code_that_stores_them() -> None:
    """The case globals.elf exists for: link.ld puts its .sbss/.bss on its only code page."""
    symbols = load_elf(IMAGES / "globals.elf").symbols
    code = {symbols[name] // PAGE for name in ("xorshift32", "record", "main")}
    data = {symbols[name] // PAGE for name in ("seed", "draws", "odd_draws", "histogram",
                                                "running")}
    assert code == data and len(code) == 1


def test_statemachine_switch_jumps_to_hundreds_of_blocks() -> None:
    """The case statemachine.elf exists for: gcc kept one block per case (a jump table of
    distinct code addresses), rather than merging cases or making a table of constants."""
    with (IMAGES / "statemachine.elf").open("rb") as f:
        elf = ELFFile(f)
        text, rodata = elf.get_section_by_name(".text"), elf.get_section_by_name(".rodata")
        assert text is not None and rodata is not None
        start, end = text["sh_addr"], text["sh_addr"] + text["sh_size"]
        data = rodata.data()
    words = struct.unpack(f"<{len(data) // 4}I", data[:len(data) // 4 * 4])
    assert len({w for w in words if start <= w < end}) >= 384


# --- crypto: the oracle is hashlib and this ChaCha20 -----------------------------------------

def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """RFC 8439, section 2.3."""
    def quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
        for x, y, z, shift in ((a, b, d, 16), (c, d, b, 12), (a, b, d, 8), (c, d, b, 7)):
            s[x] = (s[x] + s[y]) & 0xFFFFFFFF
            v = s[z] ^ s[x]
            s[z] = (v << shift | v >> (32 - shift)) & 0xFFFFFFFF

    state = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *struct.unpack("<8I", key),
             counter, *struct.unpack("<3I", nonce)]
    work = list(state)
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                           (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            quarter(work, a, b, c, d)
    return struct.pack("<16I", *((w + s) & 0xFFFFFFFF for w, s in zip(work, state, strict=True)))


KEY = bytes(range(32))
NONCE = bytes.fromhex("000000090000004a00000000")


def test_the_python_chacha20_gives_the_rfc_8439_block() -> None:
    """RFC 8439 2.3.2: its key, nonce and block counter 1 give this serialized block start."""
    assert chacha20_block(KEY, 1, NONCE)[:16] == bytes.fromhex("10f1e7e4d13b5915500fdd1fa32071c4")


def test_crypto_prints_the_digest_hashlib_computes() -> None:
    rounds, size = 16, 4096
    buf, sha = bytes(size), hashlib.sha256()
    for r in range(rounds):
        stream = b"".join(chacha20_block(KEY, r * size // 64 + b, NONCE)
                          for b in range(size // 64))
        buf = bytes(x ^ y for x, y in zip(buf, stream, strict=True))
        sha.update(buf)
    # through the CLI, as bench/speed.py's whole-process runs do
    result = subprocess.run([sys.executable, "-m", "emud", "run", str(IMAGES / "crypto.elf")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert result.stdout == (
        "crypto: self-check ok\n"
        f"crypto: rounds={rounds} bytes={rounds * size}\n"
        f"first word: {struct.unpack('<I', buf[:4])[0]:08x}\n"
        f"sha256: {sha.hexdigest()}\n")


# --- the accelerators agree -------------------------------------------------------------------

@pytest.mark.parametrize("image", ["crypto.elf", "compute_short.elf"])
def test_both_accelerators_end_in_the_same_state(image: str) -> None:
    snap, _ = both(IMAGES / image, until_poweroff())
    assert snap["exit"] == 0
    assert snap["serial"].splitlines()[-1].startswith(("sha256: ", "compute: checksum="))


@pytest.mark.parametrize(("image", "max_insns"), [
    # bounded: the interpreter re-decodes globals' code page after each of its stores
    ("globals.elf", 300_000),
    ("statemachine.elf", 1_000_000),
])
def test_both_accelerators_agree_midway(image: str, max_insns: int) -> None:
    snap, _ = both(IMAGES / image, until_poweroff(max_insns))
    assert snap["icount"] == max_insns and snap["exit"] is None
