"""ELF images: validation, loadable segments and the symbol table.

Only what loading an RV32 image needs is read (the file header, the program
headers, the section headers and `.symtab`), by a few `struct` decoders here:
pyelftools, which reads far more, costs a plain `emud run` more time to import
than the whole run of a small guest takes.  Every offset and size taken from
the file is checked against its length, so a truncated or corrupt file is one
ImageError line, never an exception from deep inside.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from pathlib import Path
from typing import NamedTuple

EM_RISCV = 243
# e_machine names the error for a host binary shows (pyelftools' spelling, as before).
MACHINE_NAMES = {3: "EM_386", 8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390",
                 40: "EM_ARM", 62: "EM_X86_64", 183: "EM_AARCH64", 243: "EM_RISCV",
                 258: "EM_LOONGARCH"}
PT_LOAD = 1
SHT_SYMTAB = 2
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
EHDR = struct.Struct("<16sHHIIIIIHHHHHH")  # Elf32_Ehdr
PHDR = struct.Struct("<IIIIIIII")  # Elf32_Phdr
SHDR = struct.Struct("<IIIIIIIIII")  # Elf32_Shdr
SYM = struct.Struct("<IIIBBH")  # Elf32_Sym


class ImageError(Exception):
    """The image cannot be used; the message says why, for a person."""


class CorruptElf(ValueError):
    """A header or table of the file points outside it (the detail of "corrupt ELF")."""


class Segment(NamedTuple):
    addr: int
    data: bytes
    memsz: int


class ElfImage:
    def __init__(self, path: Path, entry: int, segments: list[Segment],
                 symbols: dict[str, int], digest: str) -> None:
        self.path = path
        self.entry = entry
        self.segments = segments
        self.symbols = symbols
        self.digest = digest  # sha256 of the file, part of a snapshot's configuration
        self._by_addr = sorted((addr, name) for name, addr in symbols.items())

    def __repr__(self) -> str:
        return f"<ElfImage {self.path} entry {self.entry:#x}>"

    def symbolize(self, addr: int) -> str | None:
        """'name+0xoff' for the nearest symbol at or below addr."""
        i = bisect.bisect_right(self._by_addr, (addr, "\uffff")) - 1
        if i < 0:
            return None
        base, name = self._by_addr[i]
        return name if base == addr else f"{name}+{addr - base:#x}"


# --- decoding (pure functions of the file's bytes) ----------------------------------------


def _table(raw: bytes, what: str, offset: int, count: int, entsize: int,
           layout: struct.Struct) -> list[tuple[int, ...]]:
    """`count` entries of `layout`, `entsize` bytes apart from `offset`, all inside `raw`."""
    if not count:
        return []
    if entsize < layout.size:
        raise CorruptElf(f"{what} entries of {entsize} bytes (need {layout.size})")
    if offset + count * entsize > len(raw):
        raise CorruptElf(f"{what} at {offset:#x} ({count} x {entsize} bytes) is beyond "
                         f"the end of the file ({len(raw)} bytes)")
    return [layout.unpack_from(raw, offset + n * entsize) for n in range(count)]


def _chunk(raw: bytes, what: str, offset: int, size: int) -> bytes:
    if offset + size > len(raw):
        raise CorruptElf(f"{what} at {offset:#x} (+{size:#x}) is beyond the end of the file "
                         f"({len(raw)} bytes)")
    return raw[offset:offset + size]


def _name(strtab: bytes, offset: int) -> str:
    end = strtab.find(b"\0", offset)
    if offset >= len(strtab) or end < 0:
        raise CorruptElf(f"string at {offset:#x} is outside its string table")
    return strtab[offset:end].decode(errors="replace")


def read_segments(raw: bytes, phoff: int, phnum: int, phentsize: int) -> list[Segment]:
    """The PT_LOAD segments that occupy memory, at their physical addresses."""
    segments = []
    for n, (p_type, offset, _vaddr, paddr, filesz, memsz, _flags, _align) in enumerate(
            _table(raw, "program header table", phoff, phnum, phentsize, PHDR)):
        if p_type != PT_LOAD or not memsz:
            continue
        if filesz > memsz:
            raise CorruptElf(f"segment {n} has more file bytes ({filesz:#x}) than memory "
                             f"({memsz:#x})")
        segments.append(Segment(paddr, _chunk(raw, f"segment {n}", offset, filesz), memsz))
    return segments


def read_symbols(raw: bytes, shoff: int, shnum: int, shentsize: int, shstrndx: int
                 ) -> dict[str, int]:
    """Functions, objects and plain labels of `.symtab` by name (the first of a name wins;
    "$x"/"$d" mapping symbols are markers, not names)."""
    sections = _table(raw, "section header table", shoff, shnum, shentsize, SHDR)
    if not sections or shstrndx >= len(sections):
        return {}
    names = _chunk(raw, "section name table", sections[shstrndx][4], sections[shstrndx][5])
    symtab = next((s for s in sections if s[1] == SHT_SYMTAB and _name(names, s[0]) == ".symtab"),
                  None)
    if symtab is None:
        return {}
    link = symtab[6]
    if link >= len(sections):
        raise CorruptElf(f".symtab links to section {link} of {len(sections)}")
    strings = _chunk(raw, "symbol string table", sections[link][4], sections[link][5])
    entsize = symtab[9] or SYM.size
    symbols: dict[str, int] = {}
    for name_at, value, _size, info, _other, _shndx in _table(
            raw, ".symtab", symtab[4], symtab[5] // entsize, entsize, SYM):
        if info & 0xF not in (STT_NOTYPE, STT_OBJECT, STT_FUNC) or not name_at:
            continue
        name = _name(strings, name_at)
        if name and not name.startswith("$"):
            symbols.setdefault(name, value)
    return symbols


def parse_elf(path: Path, raw: bytes) -> ElfImage:
    """An RV32 little-endian image from the file's bytes; ImageError says what is wrong."""
    if raw[:4] != b"\x7fELF":
        raise ImageError(f"{path}: not an ELF file")
    if len(raw) < EHDR.size:
        raise ImageError(f"{path}: corrupt ELF: the file header is cut short ({len(raw)} "
                         "bytes)")
    elf_class, data = raw[4], raw[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ImageError(f"{path}: corrupt ELF: invalid class {elf_class} or data encoding "
                         f"{data} in the identification bytes")
    machine = int.from_bytes(raw[18:20], "little" if data == 1 else "big")
    if machine != EM_RISCV:
        raise ImageError(f"{path}: not a RISC-V ELF (machine "
                         f"{MACHINE_NAMES.get(machine, machine)})")
    if elf_class != 1:
        raise ImageError(f"{path}: a 64-bit ELF; emud runs RV32 images")
    if data != 1:
        raise ImageError(f"{path}: big-endian ELF; RISC-V is little-endian")
    (_ident, _type, _machine, _version, entry, phoff, shoff, _flags, _ehsize, phentsize,
     phnum, shentsize, shnum, shstrndx) = EHDR.unpack_from(raw)
    try:
        segments = read_segments(raw, phoff, phnum, phentsize)
        symbols = read_symbols(raw, shoff, shnum, shentsize, shstrndx)
    except CorruptElf as e:
        raise ImageError(f"{path}: corrupt ELF: {e}") from None
    if not segments:
        raise ImageError(f"{path}: no loadable segments")
    return ElfImage(path, entry, segments, symbols, hashlib.sha256(raw).hexdigest())


def load_elf(path: str | Path) -> ElfImage:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    return parse_elf(path, raw)
