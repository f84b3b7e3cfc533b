"""ELF images: validation, loadable segments and the symbol table (pyelftools)."""

from __future__ import annotations

import bisect
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

EM_RISCV = "EM_RISCV"


class ImageError(Exception):
    """The image cannot be used; the message says why, for a person."""


@dataclass(frozen=True)
class Segment:
    addr: int
    data: bytes
    memsz: int


@dataclass
class ElfImage:
    path: Path
    entry: int
    segments: list[Segment]
    symbols: dict[str, int]
    digest: str  # sha256 of the file, part of a snapshot's configuration
    _by_addr: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._by_addr = sorted((addr, name) for name, addr in self.symbols.items())

    def symbolize(self, addr: int) -> str | None:
        """'name+0xoff' for the nearest symbol at or below addr."""
        i = bisect.bisect_right(self._by_addr, (addr, "\uffff")) - 1
        if i < 0:
            return None
        base, name = self._by_addr[i]
        return name if base == addr else f"{name}+{addr - base:#x}"


def load_elf(path: str | Path) -> ElfImage:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:4] != b"\x7fELF":
        raise ImageError(f"{path}: not an ELF file")
    try:
        elf = ELFFile(io.BytesIO(raw))
        if elf["e_machine"] != EM_RISCV:
            raise ImageError(f"{path}: not a RISC-V ELF (machine {elf['e_machine']})")
        if elf.elfclass != 32:
            raise ImageError(f"{path}: a {elf.elfclass}-bit ELF; emud runs RV32 images")
        if not elf.little_endian:
            raise ImageError(f"{path}: big-endian ELF; RISC-V is little-endian")
        segments = [
            Segment(seg["p_paddr"], seg.data(), seg["p_memsz"])
            for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]
        ]
        symbols: dict[str, int] = {}
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for sym in symtab.iter_symbols():
                # "$x"/"$d" are mapping symbols (code/data markers), not names
                wanted = sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
                if sym.name and not sym.name.startswith("$") and wanted:
                    symbols.setdefault(sym.name, sym["st_value"])
        entry = elf["e_entry"]
    except ImageError:
        raise
    except (ELFError, ValueError, KeyError, IndexError, AssertionError, OSError) as e:
        raise ImageError(f"{path}: corrupt ELF: {e}") from None
    if not segments:
        raise ImageError(f"{path}: no loadable segments")
    return ElfImage(path, entry, segments, symbols, hashlib.sha256(raw).hexdigest())
