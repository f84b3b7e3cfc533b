"""emud.cpu.disasm against GNU objdump, line by line.

Three programs are assembled with the cross toolchain, linked at 0x80000000 and
disassembled with ``riscv64-unknown-elf-objdump -d``; every line objdump prints
must equal ``disassemble(word, address)`` after the normalisation below:

* a hand-written program using every RV32IMAC/Zicsr/Zifencei mnemonic;
* every 16-bit encoding (all 49152 of them, reserved ones included);
* random 32-bit words: each table entry's match with random free bits, plus
  random words of every major opcode (mostly undefined encodings).

The toolchain is required, not optional: CI installs it (.ci/run).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MARCH
from emud.cpu.disasm import (
    AQRL_SUFFIX,
    CSR_NAMES,
    OP_AMO,
    OPCODES_16,
    OPCODES_32,
    disassemble,
    insn_length,
)

BASE = 0x8000_0000
TOOLS = ("riscv64-unknown-elf-gcc", "riscv64-unknown-elf-objdump")

# binutils 2.40 (Debian 12) prints some immediate forms under the register-form name
# (`add a0,a0,1` for addi, `sll` for slli, `csrw mstatus,8` for csrrwi, ...) because
# its opcode table lists those aliases before the real instruction; later binutils
# print `addi`/`slli`/`csrwi`.  disasm prints the real names, so when objdump uses
# one of these (mnemonic, operand count) forms with a numeric last operand, the
# test appends the missing "i".  Register forms never end in a number, so nothing
# else is touched, and a newer objdump simply never triggers the rule.
IMMEDIATE_ALIASES = {
    ("add", 3), ("and", 3), ("or", 3), ("xor", 3), ("sll", 3), ("srl", 3), ("sra", 3),
    ("csrw", 2), ("csrs", 2), ("csrc", 2), ("csrrw", 3), ("csrrs", 3), ("csrrc", 3),
}  # fmt: skip
NUMBER = re.compile(r"-?(0x[0-9a-f]+|[0-9]+)")
# One objdump -d line: address, the instruction as one hex number, the text.
LINE = re.compile(r"\s*([0-9a-f]+):\t([0-9a-f]+)\s+\t(.*)")

# CSR numbers objdump prints as hex too (custom/unnamed ranges), for the random test.
UNNAMED_CSRS = (0x7C0, 0x7FF, 0x800, 0x8FF, 0xBC0, 0xCC0, 0xFC0)


def normalize(text: str) -> str:
    """objdump's text in disasm's conventions (see the module docstring)."""
    text = re.sub(r"\s*#.*", "", text)  # `# 80001000 <sym>` address comments
    text = re.sub(r"\b([0-9a-f]+) <[^>]*>$", r"0x\1", text)  # `80000010 <sym+0x4>`
    mnemonic, _, operands = " ".join(text.split()).partition(" ")
    if operands:
        args = operands.split(",")
        if (mnemonic, len(args)) in IMMEDIATE_ALIASES and NUMBER.fullmatch(args[-1]):
            mnemonic += "i"
        return f"{mnemonic} {operands}"
    return mnemonic


def objdump(tmp_path: Path, source: str) -> list[tuple[int, int, str]]:
    """(address, instruction word, text) for each instruction of `source`."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    assert not missing, f"RISC-V cross toolchain not installed: {missing}"
    src, elf = tmp_path / "insns.S", tmp_path / "insns.elf"
    src.write_text(source)
    subprocess.run(
        [TOOLS[0], *MARCH, "-nostdlib", "-nostartfiles", f"-Wl,-Ttext={BASE:#x}",
         "-Wl,--no-warn-rwx-segments", "-o", str(elf), str(src)],
        check=True,
    )  # fmt: skip
    out = subprocess.run(
        [TOOLS[1], "-d", str(elf)], check=True, capture_output=True, text=True
    ).stdout
    return [
        (int(m[1], 16), int(m[2], 16), m[3]) for m in map(LINE.fullmatch, out.splitlines()) if m
    ]


def compare(tmp_path: Path, source: str, expected_count: int | None = None) -> set[str]:
    """Assert disasm == objdump on every line; return the mnemonics seen."""
    lines = objdump(tmp_path, source)
    if expected_count is not None:
        assert len(lines) == expected_count
    mismatches = []
    for addr, word, text in lines:
        ours, theirs = disassemble(word, addr), normalize(text)
        if ours != theirs:
            mismatches.append(f"{addr:#x}: {word:#x}: disasm {ours!r} != objdump {theirs!r}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:50])
    return {disassemble(word, addr).split()[0] for addr, word, _ in lines}


def insn_directives(words: list[tuple[int, int]]) -> str:
    """Raw encodings as `.insn` (not `.word`, which objdump would dump as data)."""
    return ".text\n" + "".join(f".insn {size}, {word:#x}\n" for word, size in words)


# --- every mnemonic, written as assembly ------------------------------------------

AMO_OPS = ("swap", "add", "xor", "and", "or", "min", "max", "minu", "maxu")
AMO_LINES = [
    f"{base}{suffix} a0,a2,(a1)"
    for base in (*(f"amo{name}.w" for name in AMO_OPS), "sc.w")
    for suffix in AQRL_SUFFIX
] + [f"lr.w{suffix} t0,(s1)" for suffix in AQRL_SUFFIX]

CSR_LINES = [f"csrrs a0,{name},zero" for name in CSR_NAMES.values()] + [
    "csrrs a0,0x7c0,zero", "csrrw zero,mstatus,a0", "csrrw a0,mscratch,a1",
    "csrrw zero,0x800,t6", "csrrs zero,mie,t0", "csrrs a0,mip,a1", "csrrc zero,mie,a0",
    "csrrc s11,mtvec,t3", "csrrwi zero,mtvec,5", "csrrwi a0,mstatus,31",
    "csrrsi zero,mstatus,8", "csrrsi t1,mie,1", "csrrci zero,mstatus,8",
    "csrrci a3,mepc,0", "csrrw zero,cycle,zero",
]  # fmt: skip

BASE_LINES = [
    # every register, in every position
    *(f"add {a},{b},{c}" for a, b, c in zip(
        [f"x{i}" for i in range(32)], [f"x{(i + 7) % 32}" for i in range(32)],
        [f"x{(i + 13) % 32}" for i in range(32)], strict=True)),
    "lui a0,0x10000", "lui t6,0xfffff", "lui zero,0", "auipc a0,0x1", "auipc gp,0x80000",
    "jal ra,start", "jal zero,start", "jal a0,end", "jal ra,end",
    "jalr zero,0(ra)", "jalr zero,0(a0)", "jalr zero,8(a0)", "jalr ra,0(a0)",
    "jalr ra,-4(a0)", "jalr a0,0(a1)", "jalr a0,2047(a1)", "jalr zero,-2048(zero)",
    *(f"{b} {ops},{target}" for b in ("beq", "bne", "blt", "bge", "bltu", "bgeu")
      for ops in ("a0,a1", "a0,zero", "zero,a0", "zero,zero") for target in ("start", "end")),
    *(f"{op} a0,{off}(sp)" for op in ("lb", "lh", "lw", "lbu", "lhu")
      for off in (0, 12, -4, 2047, -2048)),
    *(f"{op} a5,{off}(s0)" for op in ("sb", "sh", "sw") for off in (0, -4, 2047, -2048)),
    "addi a0,a0,1", "addi a0,zero,-5", "addi zero,zero,5", "addi a0,a1,0", "addi zero,zero,0",
    "addi sp,sp,-16", "addi t0,t1,2047", "addi t0,t1,-2048",
    "slti a0,a1,-1", "slti a0,zero,5", "sltiu a0,a1,1", "sltiu a0,a1,5", "sltiu a0,a1,-1",
    "xori a0,a1,-1", "xori a0,a1,7", "ori a0,a1,0", "ori a0,a1,-2048",
    "andi a0,a1,255", "andi a0,a1,-8", "andi a0,a1,0",
    "slli a0,a1,0", "slli a0,a1,31", "srli a0,a1,1", "srli a0,a1,31", "srai a0,a1,7",
    "srai a0,a1,31",
    "sub a0,a1,a2", "sub a0,zero,a1", "sll a0,a1,a2", "slt a0,a1,a2", "slt a0,a1,zero",
    "slt a0,zero,a1", "sltu a0,a1,a2", "sltu a0,zero,a1", "xor a0,a1,a2", "srl a0,a1,a2",
    "sra a0,a1,a2", "or a0,a1,a2", "and a0,a1,a2",
    *(f"{op} s2,s3,s4" for op in ("mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem",
                                   "remu")),
    "fence", "fence iorw,iorw", "fence r,rw", "fence w,r", "fence i,o", "fence rw,w",
    "fence.tso", "fence.i", "ecall", "ebreak", "mret", "wfi", "unimp",
    *AMO_LINES,
    *CSR_LINES,
]  # fmt: skip

RVC_LINES = [
    "c.addi4spn a0,sp,4", "c.addi4spn s1,sp,1020", "c.lw a0,0(a1)", "c.lw s0,124(a5)",
    "c.sw a0,4(a1)", "c.sw a5,124(s0)", "c.nop", "c.addi a0,1", "c.addi t6,-32",
    "c.jal start", "c.jal end", "c.li a0,-1", "c.li ra,31", "c.addi16sp sp,-512",
    "c.addi16sp sp,496", "c.lui a0,1", "c.lui a0,0xfffff", "c.lui t6,31", "c.lui s0,0xfffe0",
    "c.srli s0,1", "c.srli a5,31", "c.srai s1,1", "c.srai a4,31", "c.andi a0,-32",
    "c.andi a0,31", "c.sub s0,a5", "c.xor a1,a2", "c.or a3,a4", "c.and s1,s0",
    "c.j start", "c.j end", "c.beqz s0,start", "c.bnez a5,end", "c.slli a0,1",
    "c.slli t6,31", "c.lwsp ra,0(sp)", "c.lwsp a0,252(sp)", "c.jr a0", "c.jr ra",
    "c.mv a0,a1", "c.mv t6,ra", "c.ebreak", "c.jalr a0", "c.jalr ra", "c.add a0,a1",
    "c.add sp,t6", "c.swsp a0,252(sp)", "c.swsp ra,0(sp)", "c.unimp",
    # HINTs: objdump keeps the c. spelling
    "c.nop 1", "c.nop -32", "c.li zero,5", "c.lui zero,1", "c.mv zero,a0", "c.add zero,a1",
    "c.slli zero,3", "c.slli64 a0", "c.srli64 s0", "c.srai64 a5",
]  # fmt: skip


def test_every_mnemonic_matches_objdump(tmp_path: Path) -> None:
    source = "\n".join(
        [".text", ".globl _start", "_start:", "start:", ".option norvc", *BASE_LINES,
         ".option rvc", *RVC_LINES, "end:", "c.nop", ""]
    )  # fmt: skip
    seen = compare(tmp_path, source, expected_count=len(BASE_LINES) + len(RVC_LINES) + 1)
    every = {e[2] for e in OPCODES_16 if e[2]} | {
        e[2] + (suffix if e[1] & 0x7F == OP_AMO else "")
        for e in OPCODES_32
        for suffix in AQRL_SUFFIX
    }
    assert every - seen == set()


def test_every_compressed_encoding_matches_objdump(tmp_path: Path) -> None:
    words = [(h, 2) for h in range(0x10000) if insn_length(h) == 2]
    compare(tmp_path, insn_directives(words), expected_count=len(words))


def test_random_32bit_encodings_match_objdump(tmp_path: Path) -> None:
    rng = random.Random(2024)
    words = []
    for mask, match, _, _ in OPCODES_32:  # each entry, with its free bits random
        words += [(rng.getrandbits(32) & ~mask | match, 4) for _ in range(48)]
    for opcode in range(3, 0x80, 4):  # every major opcode (also undefined ones)
        if opcode & 0x1C != 0x1C:  # not a >32-bit instruction-length prefix
            words += [(rng.getrandbits(32) & ~0x7F | opcode, 4) for _ in range(120)]
    csrs = (*CSR_NAMES, *UNNAMED_CSRS)  # objdump knows more CSR names than disasm
    words = [
        ((w & 0xF_FFFF) | rng.choice(csrs) << 20, n) if w & 0x7F == 0x73 else (w, n)
        for w, n in words
    ]
    compare(tmp_path, insn_directives(words), expected_count=len(words))


# --- direct assertions ------------------------------------------------------------------


def test_insn_length() -> None:
    assert insn_length(0x0513) == 4  # low half of addi a0,a0,1
    assert insn_length(0x4505) == 2
    assert insn_length(0x0000) == 2
    assert insn_length(0xFFFE) == 2


@pytest.mark.parametrize(
    ("insn", "pc", "text"),
    [
        (0x00150513, 0, "addi a0,a0,1"),
        (0x00C12783, 0, "lw a5,12(sp)"),
        (0xFEF42E23, 0, "sw a5,-4(s0)"),
        (0x00B50863, 0x80000000, "beq a0,a1,0x80000010"),
        (0x100000EF, 0x80000000, "jal 0x80000100"),
        (0x1000056F, 0x80000000, "jal a0,0x80000100"),
        (0xFFDFF06F, 0x80000004, "j 0x80000000"),
        (0x10000537, 0, "lui a0,0x10000"),
        (0x00500513, 0, "li a0,5"),
        (0x00058513, 0, "mv a0,a1"),
        (0x00000013, 0, "nop"),
        (0x00008067, 0, "ret"),
        (0x00050067, 0, "jr a0"),
        (0x30051073, 0, "csrw mstatus,a0"),
        (0x30002573, 0, "csrr a0,mstatus"),
        (0x30045073, 0, "csrwi mstatus,8"),
        (0xF1402573, 0, "csrr a0,mhartid"),
        (0x7C0012F3, 0, "csrrw t0,0x7c0,zero"),
        (0x1405A52F, 0, "lr.w.aq a0,(a1)"),
        (0x1EC5A52F, 0, "sc.w.aqrl a0,a2,(a1)"),
        (0x0FF0000F, 0, "fence"),
        (0x0210000F, 0, "fence r,w"),
        (0x0000100F, 0, "fence.i"),
        (0x30200073, 0, "mret"),
        (0x10500073, 0, "wfi"),
        (0xFFFFFFFF & ~0x7C, 0, ".4byte 0xffffff83"),
        # compressed: printed as the base instruction
        (0x4505, 0, "li a0,1"),
        (0x0505, 0, "addi a0,a0,1"),
        (0x717D, 0, "addi sp,sp,-16"),
        (0x0808, 0, "addi a0,sp,16"),
        (0x4512, 0, "lw a0,4(sp)"),
        (0xC22A, 0, "sw a0,4(sp)"),
        (0x8082, 0, "ret"),
        (0x9002, 0, "ebreak"),
        (0x0001, 0, "nop"),
        (0x0000, 0, "unimp"),
        (0xB73D, 0x800000D2, "j 0x80000000"),
        (0xD115, 0x800000DC, "beqz a0,0x80000000"),
        (0x2000, 0, ".2byte 0x2000"),  # c.fld: no D extension
        (0x0004, 0, ".2byte 0x4"),  # c.addi4spn with a zero immediate
    ],
)
def test_known_encodings(insn: int, pc: int, text: str) -> None:
    assert disassemble(insn, pc) == text


def test_targets_wrap_at_32_bits() -> None:
    assert disassemble(0x0000006F | (0x7FE << 20), 0xFFFF_FFFC) == "j 0x7fa"  # j +0x7fe
    assert disassemble(0xFFDFF06F, 0) == "j 0xfffffffc"
