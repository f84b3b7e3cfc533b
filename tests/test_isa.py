"""Per-instruction tests of the hart: RV32I, M, A, C, Zicsr, Zifencei and machine-mode traps.

Instructions are built with the encoders from `emud.cpu.decode` (cross-checked
against GNU as below); RVC snippets are assembled with the cross toolchain at
test time, so the compressed encodings are ground truth and not our own
expansion.  Every expected value in the tables is written out by hand.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from emud.clock import VirtualClock
from emud.cpu.decode import (
    ILLEGAL,
    OP_AMO,
    OP_AUIPC,
    OP_BRANCH,
    OP_IMM,
    OP_JAL,
    OP_JALR,
    OP_LOAD,
    OP_LUI,
    OP_MISC_MEM,
    OP_OP,
    OP_STORE,
    OP_SYSTEM,
    enc_b,
    enc_i,
    enc_j,
    enc_r,
    enc_s,
    enc_u,
    expand_compressed,
)
from emud.cpu.hart import Hart
from emud.memory import AddressSpace, Ram

M = 0xFFFF_FFFF
CODE = 0x8000_0000  # programs start here
DATA = 0x8000_2000  # scratch data
TRAP = 0x8000_3000  # mtvec: by default a `j .` spin loop
RAM_SIZE = 64 * 1024
UNMAPPED = 0x1000_0000

# --- instruction builders ----------------------------------------------------------

R_OPS = {
    "add": (0, 0x00), "sub": (0, 0x20), "sll": (1, 0x00), "slt": (2, 0x00),
    "sltu": (3, 0x00), "xor": (4, 0x00), "srl": (5, 0x00), "sra": (5, 0x20),
    "or": (6, 0x00), "and": (7, 0x00),
    "mul": (0, 0x01), "mulh": (1, 0x01), "mulhsu": (2, 0x01), "mulhu": (3, 0x01),
    "div": (4, 0x01), "divu": (5, 0x01), "rem": (6, 0x01), "remu": (7, 0x01),
}  # fmt: skip
I_OPS = {"addi": 0, "slti": 2, "sltiu": 3, "xori": 4, "ori": 6, "andi": 7}
SHIFT_OPS = {"slli": (1, 0x00), "srli": (5, 0x00), "srai": (5, 0x20)}
LOAD_OPS = {"lb": 0, "lh": 1, "lw": 2, "lbu": 4, "lhu": 5}
STORE_OPS = {"sb": 0, "sh": 1, "sw": 2}
BRANCH_OPS = {"beq": 0, "bne": 1, "blt": 4, "bge": 5, "bltu": 6, "bgeu": 7}
AMO_OPS = {
    "amoadd.w": 0x00, "amoswap.w": 0x01, "amoxor.w": 0x04, "amoor.w": 0x08,
    "amoand.w": 0x0C, "amomin.w": 0x10, "amomax.w": 0x14, "amominu.w": 0x18,
    "amomaxu.w": 0x1C,
}  # fmt: skip
CSR_OPS = {"csrrw": 1, "csrrs": 2, "csrrc": 3, "csrrwi": 5, "csrrsi": 6, "csrrci": 7}

ECALL = 0x0000_0073
EBREAK = 0x0010_0073
MRET = 0x3020_0073
WFI = 0x1050_0073
FENCE = 0x0FF0_000F  # fence iorw,iorw
FENCE_TSO = 0x8330_000F
FENCE_I = 0x0000_100F
NOP = 0x0000_0013
C_NOP = 0x0001
SPIN = 0x0000_006F  # j .

MSTATUS, MISA, MIE, MTVEC, MSCRATCH, MEPC, MCAUSE, MTVAL, MIP = (
    0x300, 0x301, 0x304, 0x305, 0x340, 0x341, 0x342, 0x343, 0x344,
)
MCYCLE, MINSTRET, MCYCLEH, MINSTRETH = 0xB00, 0xB02, 0xB80, 0xB82
CYCLE, TIME, INSTRET = 0xC00, 0xC01, 0xC02
MVENDORID, MARCHID, MIMPID, MHARTID = 0xF11, 0xF12, 0xF13, 0xF14


def rtype(name: str, rd: int, rs1: int, rs2: int) -> int:
    f3, f7 = R_OPS[name]
    return enc_r(OP_OP, rd, f3, rs1, rs2, f7)


def itype(name: str, rd: int, rs1: int, imm: int) -> int:
    if name in SHIFT_OPS:
        f3, f7 = SHIFT_OPS[name]
        return enc_i(OP_IMM, rd, f3, rs1, (f7 << 5) | imm)
    return enc_i(OP_IMM, rd, I_OPS[name], rs1, imm)


def addi(rd: int, rs1: int, imm: int) -> int:
    return enc_i(OP_IMM, rd, 0, rs1, imm)


def lui(rd: int, imm20: int) -> int:
    return enc_u(OP_LUI, rd, imm20 << 12)


def auipc(rd: int, imm20: int) -> int:
    return enc_u(OP_AUIPC, rd, imm20 << 12)


def load(name: str, rd: int, rs1: int, imm: int) -> int:
    return enc_i(OP_LOAD, rd, LOAD_OPS[name], rs1, imm)


def store(name: str, rs2: int, rs1: int, imm: int) -> int:
    return enc_s(OP_STORE, STORE_OPS[name], rs1, rs2, imm)


def branch(name: str, rs1: int, rs2: int, offset: int) -> int:
    return enc_b(OP_BRANCH, BRANCH_OPS[name], rs1, rs2, offset)


def jal(rd: int, offset: int) -> int:
    return enc_j(OP_JAL, rd, offset)


def jalr(rd: int, rs1: int, imm: int) -> int:
    return enc_i(OP_JALR, rd, 0, rs1, imm)


def amo(name: str, rd: int, rs1: int, rs2: int, aq: int = 0, rl: int = 0) -> int:
    return enc_r(OP_AMO, rd, 2, rs1, rs2, (AMO_OPS[name] << 2) | (aq << 1) | rl)


def lr(rd: int, rs1: int) -> int:
    return enc_r(OP_AMO, rd, 2, rs1, 0, 0x02 << 2)


def sc(rd: int, rs1: int, rs2: int) -> int:
    return enc_r(OP_AMO, rd, 2, rs1, rs2, 0x03 << 2)


def csrop(name: str, rd: int, csr: int, src: int) -> int:
    """A Zicsr instruction; `src` is rs1 or, for the *i forms, the 5-bit immediate."""
    return enc_i(OP_SYSTEM, rd, CSR_OPS[name], src, csr)


def csrr(rd: int, csr: int) -> int:
    return csrop("csrrs", rd, csr, 0)


def csrw(csr: int, rs1: int) -> int:
    return csrop("csrrw", 0, csr, rs1)


def code_bytes(insns: Sequence[int]) -> bytes:
    """Little-endian code; an instruction whose low two bits are 11 is 32-bit, else RVC."""
    out = bytearray()
    for insn in insns:
        out += insn.to_bytes(4 if insn & 3 == 3 else 2, "little")
    return bytes(out)


# --- the toolchain ---------------------------------------------------------------

AS = ["riscv64-unknown-elf-as", "-march=rv32imac_zicsr_zifencei", "-mabi=ilp32", "-mno-relax"]


@functools.cache
def assemble(source: str) -> bytes:
    """Raw .text bytes of an assembly snippet (fails, never skips, without the toolchain)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, binary = Path(tmp, "a.S"), Path(tmp, "a.o"), Path(tmp, "a.bin")
        src.write_text(source + "\n")
        for cmd in (
            [*AS, "-o", str(obj), str(src)],
            ["riscv64-unknown-elf-objcopy", "-O", "binary", "-j", ".text", str(obj),
             str(binary)],
        ):
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stderr}\n{source}"
        return binary.read_bytes()


def assemble_each(lines: Sequence[str], size: int, rvc: bool) -> list[int]:
    """Assemble one instruction per line (each exactly `size` bytes) in one toolchain run."""
    body = "\n".join([".option rvc" if rvc else ".option norvc", *lines])
    raw = assemble(body)
    assert len(raw) == size * len(lines), "an instruction was not the expected size"
    return [int.from_bytes(raw[i : i + size], "little") for i in range(0, len(raw), size)]


# --- running code -------------------------------------------------------------------


@dataclass
class Run:
    hart: Hart
    start: int
    end: int  # address of the `j .` appended to the program

    def __getitem__(self, reg: int) -> int:
        return self.hart.x[reg]

    def mem(self, addr: int, length: int) -> bytes:
        return self.hart.bus.read_bytes(addr, length)

    def word(self, addr: int) -> int:
        return int.from_bytes(self.mem(addr, 4), "little")

    def assert_trap(self, cause: int, mepc: int, mtval: int) -> None:
        h = self.hart
        assert (h.pc, h.mcause, h.mepc, h.mtval) == (TRAP, cause, mepc, mtval), (
            f"pc={h.pc:#x} mcause={h.mcause:#x} mepc={h.mepc:#x} mtval={h.mtval:#x}"
        )


def run(
    code: bytes | Sequence[int],
    regs: dict[int, int] | None = None,
    *,
    mem: dict[int, bytes] | None = None,
    at: int = CODE,
    handler: bytes | Sequence[int] = (SPIN,),
    mtvec: int = TRAP,
    budget: int = 200,
) -> Run:
    """Run `code` (followed by `j .`) from `at` for `budget` instructions."""
    hart = Hart(AddressSpace(Ram(CODE, RAM_SIZE)), VirtualClock())
    body = code if isinstance(code, bytes) else code_bytes(code)
    hart.bus.write_bytes(at, body + code_bytes([SPIN]))
    hart.bus.write_bytes(TRAP, handler if isinstance(handler, bytes) else code_bytes(handler))
    for addr, data in (mem or {}).items():
        hart.bus.write_bytes(addr, data)
    hart.reset(at)
    hart.mtvec = mtvec
    for reg, value in (regs or {}).items():
        assert reg != 0
        hart.x[reg] = value & M
    hart.run(budget)
    return Run(hart, at, at + len(body))


def run_ok(code: bytes | Sequence[int], regs: dict[int, int] | None = None,
           **kwargs: object) -> Run:
    """`run`, asserting that the program reached its end without trapping."""
    result = run(code, regs, **kwargs)  # type: ignore[arg-type]
    h = result.hart
    assert h.pc == result.end, (
        f"stopped at pc={h.pc:#x} (end {result.end:#x}): mcause={h.mcause:#x} "
        f"mepc={h.mepc:#x} mtval={h.mtval:#x}"
    )
    return result


def regfile(regs: dict[int, int], changes: dict[int, int]) -> list[int]:
    """The full expected register file: `regs` (as set up) updated by `changes`."""
    x = [0] * 32
    for reg, value in {**regs, **changes}.items():
        if reg:
            x[reg] = value & M
    return x


T0, T1, T2 = 5, 6, 7  # rs1, rs2, rd of the table-driven tests


# --- the encoders themselves, against GNU as ------------------------------------------

ENCODER_CHECKS = [
    ("add t2, t0, t1", rtype("add", 7, 5, 6)),
    ("sub t2, t0, t1", rtype("sub", 7, 5, 6)),
    ("sra a0, a1, a2", rtype("sra", 10, 11, 12)),
    ("mulhsu s11, t6, ra", rtype("mulhsu", 27, 31, 1)),
    ("remu a0, a1, a2", rtype("remu", 10, 11, 12)),
    ("addi a0, a1, -2048", addi(10, 11, -2048)),
    ("sltiu t2, t0, -1", itype("sltiu", 7, 5, -1)),
    ("srai t2, t0, 31", itype("srai", 7, 5, 31)),
    ("slli t2, t0, 31", itype("slli", 7, 5, 31)),
    ("lui a0, 0xfffff", lui(10, 0xFFFFF)),
    ("auipc a0, 0x12345", auipc(10, 0x12345)),
    ("lh a0, -2048(sp)", load("lh", 10, 2, -2048)),
    ("lbu a0, 2047(sp)", load("lbu", 10, 2, 2047)),
    ("sw t6, -4(s0)", store("sw", 31, 8, -4)),
    ("sb t6, 2047(s0)", store("sb", 31, 8, 2047)),
    ("bgeu a0, a1, .-4096", branch("bgeu", 10, 11, -4096)),
    ("blt a0, a1, .+4094", branch("blt", 10, 11, 4094)),
    ("jal ra, .-1048576", jal(1, -1048576)),
    ("jal zero, .+1048574", jal(0, 1048574)),
    ("jalr ra, -1(t0)", jalr(1, 5, -1)),
    ("amomaxu.w.aqrl a0, a1, (a2)", amo("amomaxu.w", 10, 12, 11, 1, 1)),
    ("amomin.w a0, a1, (a2)", amo("amomin.w", 10, 12, 11)),
    ("lr.w a0, (a1)", lr(10, 11)),
    ("sc.w a0, a2, (a1)", sc(10, 11, 12)),
    ("csrrw a0, mscratch, a1", csrop("csrrw", 10, MSCRATCH, 11)),
    ("csrrci a0, mstatus, 31", csrop("csrrci", 10, MSTATUS, 31)),
    ("csrrs a0, cycle, zero", csrr(10, CYCLE)),
    ("ecall", ECALL),
    ("ebreak", EBREAK),
    ("mret", MRET),
    ("wfi", WFI),
    ("fence iorw, iorw", FENCE),
    ("fence.tso", FENCE_TSO),
    ("fence.i", FENCE_I),
]


def test_encoders_match_gnu_as() -> None:
    words = assemble_each([src for src, _ in ENCODER_CHECKS], 4, rvc=False)
    for (src, ours), theirs in zip(ENCODER_CHECKS, words, strict=True):
        assert ours == theirs, f"{src}: {ours:#010x} != as {theirs:#010x}"


# --- RV32I / RV32M register-register and immediate ALU ---------------------------------

R_CASES = [
    ("add", 1, 2, 3),
    ("add", 0xFFFF_FFFF, 1, 0),
    ("add", 0x7FFF_FFFF, 1, 0x8000_0000),
    ("sub", 1, 2, 0xFFFF_FFFF),
    ("sub", 0x8000_0000, 1, 0x7FFF_FFFF),
    ("sll", 1, 31, 0x8000_0000),
    ("sll", 0xFFFF_FFFF, 36, 0xFFFF_FFF0),  # only rs2[4:0] counts
    ("sll", 3, 32, 3),
    ("slt", 0xFFFF_FFFF, 1, 1),  # -1 < 1
    ("slt", 1, 0xFFFF_FFFF, 0),
    ("slt", 0x8000_0000, 0x7FFF_FFFF, 1),
    ("slt", 5, 5, 0),
    ("sltu", 0xFFFF_FFFF, 1, 0),
    ("sltu", 1, 0xFFFF_FFFF, 1),
    ("sltu", 0, 0, 0),
    ("xor", 0xFF00_FF00, 0x0FF0_0FF0, 0xF0F0_F0F0),
    ("srl", 0x8000_0000, 31, 1),
    ("srl", 0x8000_0000, 0xFFFF_FFE1, 0x4000_0000),
    ("sra", 0x8000_0000, 31, 0xFFFF_FFFF),
    ("sra", 0x8000_0000, 1, 0xC000_0000),
    ("sra", 0x7FFF_FFFF, 31, 0),
    ("sra", 0x8000_0000, 32, 0x8000_0000),
    ("or", 0xF0F0_0000, 0x0000_F0F0, 0xF0F0_F0F0),
    ("and", 0xFF00_FF00, 0x0FF0_0FF0, 0x0F00_0F00),
    ("mul", 0xFFFF_FFFF, 0xFFFF_FFFF, 1),
    ("mul", 0x1_0000, 0x1_0000, 0),
    ("mul", 123456, 654321, 0xCEDA_BE40),  # low 32 bits of 80779853376
    ("mulh", 0xFFFF_FFFF, 0xFFFF_FFFF, 0),
    ("mulh", 0x8000_0000, 0x8000_0000, 0x4000_0000),
    ("mulh", 0x8000_0000, 1, 0xFFFF_FFFF),
    ("mulh", 0x7FFF_FFFF, 0x7FFF_FFFF, 0x3FFF_FFFF),
    ("mulh", 0xFFFF_FFFF, 1, 0xFFFF_FFFF),
    ("mulhsu", 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF),  # -1 * (2**32-1)
    ("mulhsu", 0x8000_0000, 0xFFFF_FFFF, 0x8000_0000),
    ("mulhsu", 2, 0x8000_0000, 1),  # rs2 is unsigned
    ("mulhsu", 0xFFFF_FFFF, 1, 0xFFFF_FFFF),
    ("mulhu", 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFE),
    ("mulhu", 0x8000_0000, 2, 1),
    ("mulhu", 0xFFFF_FFFF, 1, 0),
    ("div", 20, 6, 3),
    ("div", -20, 6, -3),  # rounds towards zero
    ("div", 20, -6, -3),
    ("div", -20, -6, 3),
    ("div", 7, 0, 0xFFFF_FFFF),  # by zero: all ones
    ("div", 0x8000_0000, 0xFFFF_FFFF, 0x8000_0000),  # overflow: -2**31
    ("divu", 0xFFFF_FFFF, 2, 0x7FFF_FFFF),
    ("divu", 7, 0, 0xFFFF_FFFF),
    ("divu", 0x8000_0000, 0xFFFF_FFFF, 0),
    ("rem", 20, 6, 2),
    ("rem", -20, 6, -2),  # sign follows the dividend
    ("rem", 20, -6, 2),
    ("rem", -20, -6, -2),
    ("rem", 7, 0, 7),  # by zero: the dividend
    ("rem", -7, 0, -7),
    ("rem", 0x8000_0000, 0xFFFF_FFFF, 0),  # overflow: 0
    ("remu", 0xFFFF_FFFF, 10, 5),
    ("remu", 7, 0, 7),
    ("remu", 0x8000_0000, 0xFFFF_FFFF, 0x8000_0000),
]


@pytest.mark.parametrize(("name", "a", "b", "expected"), R_CASES)
def test_register_register(name: str, a: int, b: int, expected: int) -> None:
    regs = {T0: a, T1: b, T2: 0x5555_5555}
    r = run_ok([rtype(name, T2, T0, T1)], regs)
    assert r.hart.x == regfile(regs, {T2: expected}), f"{name} {a:#x}, {b:#x}"


@pytest.mark.parametrize("name", sorted(R_OPS))
def test_register_register_rd_is_a_source(name: str) -> None:
    """rd == rs1 == rs2: both operands are read before the write."""
    expected = {"add": 14, "sub": 0, "sll": 7 << 7, "slt": 0, "sltu": 0, "xor": 0, "srl": 0,
                "sra": 0, "or": 7, "and": 7, "mul": 49, "mulh": 0, "mulhsu": 0, "mulhu": 0,
                "div": 1, "divu": 1, "rem": 0, "remu": 0}[name]
    r = run_ok([rtype(name, T0, T0, T0)], {T0: 7})
    assert r[T0] == expected


I_CASES = [
    ("addi", 5, -6, 0xFFFF_FFFF),
    ("addi", 0xFFFF_FFFF, 1, 0),
    ("addi", 0, 2047, 2047),
    ("addi", 0, -2048, 0xFFFF_F800),
    ("slti", 0xFFFF_FFFF, 0, 1),
    ("slti", 0, -1, 0),
    ("slti", 0x8000_0000, -2048, 1),
    ("slti", 5, 5, 0),
    ("sltiu", 0, -1, 1),  # the immediate is sign-extended, then compared unsigned
    ("sltiu", 0xFFFF_FFFE, -1, 1),
    ("sltiu", 0xFFFF_FFFF, -1, 0),
    ("sltiu", 0, 1, 1),  # seqz
    ("sltiu", 5, 1, 0),
    ("xori", 0x1234_5678, -1, 0xEDCB_A987),  # not
    ("xori", 0xFF, 0x0F, 0xF0),
    ("ori", 0x8000_0000, -2048, 0xFFFF_F800),
    ("ori", 0, 0x7FF, 0x7FF),
    ("andi", 0xFFFF_FFFF, -16, 0xFFFF_FFF0),
    ("andi", 0x1234_5678, 0xFF, 0x78),
    ("slli", 1, 31, 0x8000_0000),
    ("slli", 0xFFFF_FFFF, 0, 0xFFFF_FFFF),
    ("slli", 0x1234_5678, 4, 0x2345_6780),
    ("srli", 0x8000_0000, 31, 1),
    ("srli", 0xFFFF_FFFF, 1, 0x7FFF_FFFF),
    ("srai", 0x8000_0000, 31, 0xFFFF_FFFF),
    ("srai", 0x7FFF_FFFF, 31, 0),
    ("srai", 0xF000_0000, 4, 0xFF00_0000),
]


@pytest.mark.parametrize(("name", "a", "imm", "expected"), I_CASES)
def test_register_immediate(name: str, a: int, imm: int, expected: int) -> None:
    regs = {T0: a, T2: 0x5555_5555}
    r = run_ok([itype(name, T2, T0, imm)], regs)
    assert r.hart.x == regfile(regs, {T2: expected})


@pytest.mark.parametrize(("imm20", "expected"), [
    (0x12345, 0x1234_5000), (0xFFFFF, 0xFFFF_F000), (0x80000, 0x8000_0000), (0, 0),
])
def test_lui(imm20: int, expected: int) -> None:
    r = run_ok([lui(T2, imm20)], {T2: 0x5555_5555})
    assert r[T2] == expected


@pytest.mark.parametrize(("at", "imm20", "expected"), [
    (CODE, 0, CODE),
    (CODE + 0xABE, 0x12345, 0x9234_5ABE),  # the low 12 bits of pc are kept
    (CODE + 0xABE, 0xFFFFF, 0x7FFF_FABE),  # negative: pc - 4096
    (CODE + 0x7FE, 0x80000, 0x0000_07FE),  # wraps around 2**32
])
def test_auipc(at: int, imm20: int, expected: int) -> None:
    r = run_ok([auipc(T2, imm20)], {T2: 0x5555_5555}, at=at)
    assert r[T2] == expected


X0_WRITERS = [
    ("lui", [lui(0, 0x12345)]),
    ("auipc", [auipc(0, 1)]),
    ("addi", [addi(0, T1, 1)]),
    ("slli", [itype("slli", 0, T1, 3)]),
    ("add", [rtype("add", 0, T1, T1)]),
    ("mul", [rtype("mul", 0, T1, T1)]),
    ("divu by zero", [rtype("divu", 0, T1, 0)]),
    ("lw", [load("lw", 0, T0, 0)]),
    ("lb", [load("lb", 0, T0, 3)]),
    ("jal", [jal(0, 4)]),
    ("jalr", [auipc(T2, 0), jalr(0, T2, 8)]),
    ("lr.w", [lr(0, T0)]),
    ("csrrs", [csrr(0, MSCRATCH)]),
    ("c.li (hint)", [0x4015]),  # c.li x0, 5
    ("c.mv (hint)", [0x801A]),  # c.mv x0, t1
]


@pytest.mark.parametrize("insns", [i for _, i in X0_WRITERS], ids=[n for n, _ in X0_WRITERS])
def test_writes_to_x0_are_ignored(insns: list[int]) -> None:
    regs = {T0: DATA, T1: 7, T2: 0}
    r = run_ok(insns, regs, mem={DATA: b"\xff" * 4})
    expected = regfile(regs, {T2: r[T2]})  # T2 is scratch for the jalr case
    assert r.hart.x == expected


def test_amo_and_sc_with_rd_x0_still_write_memory() -> None:
    r = run_ok([amo("amoadd.w", 0, T0, T1), lr(T2, T0), sc(0, T0, T1)],
               {T0: DATA, T1: 5}, mem={DATA: (10).to_bytes(4, "little")})
    assert r[0] == 0 and r[T2] == 15 and r.word(DATA) == 5


# --- loads and stores ----------------------------------------------------------------

LOAD_MEMORY = bytes([0x80, 0xFF, 0x7F, 0x01, 0xFF, 0x7F, 0x00, 0x80])
LOAD_CASES = [
    ("lb", 0, 0xFFFF_FF80),
    ("lb", 1, 0xFFFF_FFFF),
    ("lb", 2, 0x7F),
    ("lbu", 0, 0x80),
    ("lbu", 1, 0xFF),
    ("lh", 0, 0xFFFF_FF80),
    ("lh", 2, 0x017F),
    ("lh", 4, 0x7FFF),
    ("lh", 6, 0xFFFF_8000),
    ("lhu", 0, 0xFF80),
    ("lhu", 6, 0x8000),
    ("lw", 0, 0x017F_FF80),
    ("lw", 4, 0x8000_7FFF),
]


@pytest.mark.parametrize("base_delta", [0, 0x10, -0x10, 0x7F8])
@pytest.mark.parametrize(("name", "offset", "expected"), LOAD_CASES)
def test_load(name: str, offset: int, expected: int, base_delta: int) -> None:
    regs = {T0: DATA + base_delta, T2: 0x5555_5555}
    r = run_ok([load(name, T2, T0, offset - base_delta)], regs, mem={DATA: LOAD_MEMORY})
    assert r.hart.x == regfile(regs, {T2: expected})


def test_load_into_its_base_register() -> None:
    r = run_ok([load("lw", T0, T0, 4)], {T0: DATA}, mem={DATA: LOAD_MEMORY})
    assert r[T0] == 0x8000_7FFF


STORE_CASES = [
    ("sb", 1, "aa78aaaaaaaaaaaa"),
    ("sb", 7, "aaaaaaaaaaaaaa78"),
    ("sh", 2, "aaaa7856aaaaaaaa"),
    ("sh", 6, "aaaaaaaaaaaa7856"),
    ("sw", 4, "aaaaaaaa78563412"),
]


@pytest.mark.parametrize("base_delta", [0, 0x10, -0x10, -0x7F8])
@pytest.mark.parametrize(("name", "offset", "expected"), STORE_CASES)
def test_store(name: str, offset: int, expected: str, base_delta: int) -> None:
    regs = {T0: DATA + base_delta, T1: 0x1234_5678}
    r = run_ok([store(name, T1, T0, offset - base_delta)], regs, mem={DATA: b"\xaa" * 8})
    assert r.mem(DATA, 8).hex() == expected
    assert r.hart.x == regfile(regs, {})


def test_store_of_the_base_register_itself() -> None:
    r = run_ok([store("sw", T0, T0, 0)], {T0: DATA})
    assert r.word(DATA) == DATA


# --- control transfer ---------------------------------------------------------------

BRANCH_CASES = [
    ("beq", 5, 5, True), ("beq", 5, 6, False), ("beq", 0, 0x8000_0000, False),
    ("bne", 5, 6, True), ("bne", 5, 5, False),
    ("blt", -1, 1, True), ("blt", 1, -1, False), ("blt", 5, 5, False),
    ("blt", 0x8000_0000, 0x7FFF_FFFF, True),
    ("bge", 1, -1, True), ("bge", -1, 1, False), ("bge", 5, 5, True),
    ("bge", 0x7FFF_FFFF, 0x8000_0000, True),
    ("bltu", 1, -1, True), ("bltu", -1, 1, False), ("bltu", 5, 5, False),
    ("bgeu", -1, 1, True), ("bgeu", 1, -1, False), ("bgeu", 5, 5, True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "a", "b", "taken"), BRANCH_CASES)
def test_branch_forward(name: str, a: int, b: int, taken: bool) -> None:
    r = run_ok([branch(name, T0, T1, 8), addi(T2, 0, 1)], {T0: a, T1: b})
    assert r[T2] == (0 if taken else 1)


@pytest.mark.parametrize(("name", "a", "b", "taken"), BRANCH_CASES)
def test_branch_backward(name: str, a: int, b: int, taken: bool) -> None:
    code = [
        jal(0, 12),  # 0: to the branch
        addi(T2, 0, 1),  # 4: the branch target
        jal(0, 12),  # 8: to the end
        branch(name, T0, T1, -8),  # 12
        addi(T2, 0, 2),  # 16: fall through
    ]
    r = run_ok(code, {T0: a, T1: b})
    assert r[T2] == (1 if taken else 2)


def test_backward_branch_loop() -> None:
    """A counted loop: sum 1..10."""
    code = [addi(T0, 0, 10), rtype("add", T2, T2, T0), addi(T0, T0, -1), branch("bne", T0, 0, -8)]
    r = run_ok(code)
    assert (r[T0], r[T2]) == (0, 55)


def test_branch_same_register() -> None:
    r = run_ok([branch("bge", T0, T0, 8), addi(T2, 0, 1)], {T0: 0x8000_0000})
    assert r[T2] == 0


def test_jal_forward_links_next_pc() -> None:
    r = run_ok([NOP, jal(1, 8), addi(T2, 0, 1)])
    assert (r[1], r[T2]) == (CODE + 8, 0)


def test_jal_backward() -> None:
    r = run_ok([jal(0, 12), addi(T2, 0, 1), jal(0, 8), jal(T0, -8)])
    assert (r[T2], r[T0]) == (1, CODE + 16)


@pytest.mark.parametrize("offset", [0x8000, 0xF000 - 2])
def test_jal_far(offset: int) -> None:
    r = run([jal(1, offset)], mem={CODE + offset: code_bytes([SPIN])})
    assert (r.hart.pc, r[1]) == (CODE + offset, CODE + 4)


TARGET = CODE + 0x100


@pytest.mark.parametrize(("base", "imm"), [
    (TARGET, 0),
    (TARGET - 4, 4),
    (TARGET + 16, -16),
    (TARGET + 1, 0),  # bit 0 of the target is cleared
    (TARGET, 1),
    (TARGET + 2, -1),
    (TARGET - 2047, 2047),
])
def test_jalr(base: int, imm: int) -> None:
    r = run([NOP, jalr(1, T0, imm)], {T0: base}, mem={TARGET: code_bytes([SPIN])})
    assert (r.hart.pc, r[1], r[T0]) == (TARGET, CODE + 8, base)


def test_jalr_rd_equals_rs1() -> None:
    r = run([jalr(T0, T0, 0)], {T0: TARGET}, mem={TARGET: code_bytes([SPIN])})
    assert (r.hart.pc, r[T0]) == (TARGET, CODE + 4)


# --- fences ----------------------------------------------------------------------


@pytest.mark.parametrize("insn", [FENCE, FENCE_TSO, enc_i(OP_MISC_MEM, 0, 0, 0, 0x033)],
                         ids=["fence", "fence.tso", "fence rw,rw"])
def test_fence_is_a_no_op(insn: int) -> None:
    regs = {T0: 1, T1: 2}
    r = run_ok([insn], regs)
    assert r.hart.x == regfile(regs, {})


@pytest.mark.parametrize("with_fence_i", [True, False])
def test_self_modifying_code(with_fence_i: bool) -> None:
    """Patch an instruction that already ran; (fence.i and) run it again."""
    patched = addi(T2, T2, 100)
    code = [
        addi(T1, 0, 2),  # 0: loop counter
        addi(T2, T2, 1),  # 4: patched to `addi t2, t2, 100`
        store("sw", 28, 29, 0),  # 8
        FENCE_I if with_fence_i else NOP,  # 12
        addi(T1, T1, -1),  # 16
        branch("bne", T1, 0, -16),  # 20
    ]
    r = run_ok(code, {28: patched, 29: CODE + 4})
    assert r[T2] == 101


# --- RV32A ----------------------------------------------------------------------------

AMO_CASES = [
    ("amoswap.w", 0x1111_1111, 0x2222_2222, 0x2222_2222),
    ("amoadd.w", 0xFFFF_FFFF, 2, 1),
    ("amoxor.w", 0xFF00_FF00, 0x0FF0_0FF0, 0xF0F0_F0F0),
    ("amoand.w", 0xFF00_FF00, 0x0FF0_0FF0, 0x0F00_0F00),
    ("amoor.w", 0xFF00_FF00, 0x0FF0_0FF0, 0xFFF0_FFF0),
    ("amomin.w", 0xFFFF_FFFF, 1, 0xFFFF_FFFF),  # signed: -1 < 1
    ("amomin.w", 0x8000_0000, 0x7FFF_FFFF, 0x8000_0000),
    ("amomin.w", 3, 2, 2),
    ("amomax.w", 0xFFFF_FFFF, 1, 1),
    ("amomax.w", 0x8000_0000, 0x7FFF_FFFF, 0x7FFF_FFFF),
    ("amomax.w", 3, 2, 3),
    ("amominu.w", 0xFFFF_FFFF, 1, 1),  # unsigned
    ("amominu.w", 2, 3, 2),
    ("amomaxu.w", 0xFFFF_FFFF, 1, 0xFFFF_FFFF),
    ("amomaxu.w", 0x7FFF_FFFF, 0x8000_0000, 0x8000_0000),
]


@pytest.mark.parametrize("aqrl", [(0, 0), (1, 1)], ids=["", "aqrl"])
@pytest.mark.parametrize(("name", "old", "src", "new"), AMO_CASES)
def test_amo(name: str, old: int, src: int, new: int, aqrl: tuple[int, int]) -> None:
    regs = {T0: DATA + 4, T1: src}
    mem = {DATA: bytes(range(12))}
    mem[DATA + 4] = old.to_bytes(4, "little")
    r = run_ok([amo(name, T2, T0, T1, *aqrl)], regs, mem=mem)
    assert r.hart.x == regfile(regs, {T2: old})
    assert r.mem(DATA, 12) == bytes(range(4)) + new.to_bytes(4, "little") + bytes(range(8, 12))


def test_amo_rd_equals_rs2() -> None:
    """amoswap t1, t1, (t0): memory gets the old t1, t1 gets the old memory."""
    r = run_ok([amo("amoswap.w", T1, T0, T1)], {T0: DATA, T1: 7},
               mem={DATA: (9).to_bytes(4, "little")})
    assert (r[T1], r.word(DATA)) == (9, 7)


def test_lr_sc_success() -> None:
    code = [lr(T2, T0), addi(T2, T2, 1), sc(28, T0, T2)]
    r = run_ok(code, {T0: DATA, 28: 0x5555}, mem={DATA: (41).to_bytes(4, "little")})
    assert (r[28], r[T2], r.word(DATA)) == (0, 42, 42)


def test_sc_without_reservation_fails() -> None:
    r = run_ok([sc(28, T0, T1)], {T0: DATA, T1: 7, 28: 0x5555},
               mem={DATA: (41).to_bytes(4, "little")})
    assert (r[28], r.word(DATA)) == (1, 41)


def test_sc_to_another_address_fails() -> None:
    r = run_ok([lr(T2, T0), sc(28, 29, T1)], {T0: DATA, 29: DATA + 4, T1: 7},
               mem={DATA: bytes(8)})
    assert (r[28], r.mem(DATA, 8)) == (1, bytes(8))


def test_second_sc_fails() -> None:
    """An SC (successful or not) ends the reservation."""
    r = run_ok([lr(T2, T0), sc(28, T0, T1), sc(29, T0, 30)], {T0: DATA, T1: 7, 30: 9})
    assert (r[28], r[29], r.word(DATA)) == (0, 1, 7)


def test_lr_after_sc_reserves_again() -> None:
    code = [lr(T2, T0), sc(28, T0, T1), lr(T2, T0), sc(29, T0, 30)]
    r = run_ok(code, {T0: DATA, T1: 7, 30: 9})
    assert (r[T2], r[28], r[29], r.word(DATA)) == (7, 0, 0, 9)


# --- RVC: expansion against GNU as ------------------------------------------------------

RVC_EQUIVALENTS = [
    ("c.addi4spn a0, sp, 1020", "addi a0, sp, 1020"),
    ("c.addi4spn s1, sp, 4", "addi s1, sp, 4"),
    ("c.lw a0, 124(s0)", "lw a0, 124(s0)"),
    ("c.lw a5, 0(a5)", "lw a5, 0(a5)"),
    ("c.sw a1, 124(s1)", "sw a1, 124(s1)"),
    ("c.sw s0, 4(a5)", "sw s0, 4(a5)"),
    ("c.nop", "addi zero, zero, 0"),
    ("c.addi a0, -32", "addi a0, a0, -32"),
    ("c.addi t6, 31", "addi t6, t6, 31"),
    ("c.jal .+2046", "jal ra, .+2046"),
    ("c.jal .-2048", "jal ra, .-2048"),
    ("c.li a0, -32", "addi a0, zero, -32"),
    ("c.li ra, 31", "addi ra, zero, 31"),
    ("c.addi16sp sp, -512", "addi sp, sp, -512"),
    ("c.addi16sp sp, 496", "addi sp, sp, 496"),
    ("c.addi16sp sp, 16", "addi sp, sp, 16"),
    ("c.lui a0, 0xfffe0", "lui a0, 0xfffe0"),
    ("c.lui a0, 0xfffff", "lui a0, 0xfffff"),
    ("c.lui t0, 1", "lui t0, 1"),
    ("c.lui t6, 31", "lui t6, 31"),
    ("c.srli a0, 31", "srli a0, a0, 31"),
    ("c.srli s0, 1", "srli s0, s0, 1"),
    ("c.srai s1, 1", "srai s1, s1, 1"),
    ("c.srai a5, 31", "srai a5, a5, 31"),
    ("c.andi a5, -1", "andi a5, a5, -1"),
    ("c.andi s0, -32", "andi s0, s0, -32"),
    ("c.andi s0, 31", "andi s0, s0, 31"),
    ("c.sub s0, a5", "sub s0, s0, a5"),
    ("c.xor a0, a1", "xor a0, a0, a1"),
    ("c.or a2, a3", "or a2, a2, a3"),
    ("c.and a4, s1", "and a4, a4, s1"),
    ("c.j .-2048", "jal zero, .-2048"),
    ("c.j .+2046", "jal zero, .+2046"),
    ("c.beqz s0, .-256", "beq s0, zero, .-256"),
    ("c.beqz a5, .+254", "beq a5, zero, .+254"),
    ("c.bnez a5, .+254", "bne a5, zero, .+254"),
    ("c.bnez s1, .-2", "bne s1, zero, .-2"),
    ("c.slli t6, 31", "slli t6, t6, 31"),
    ("c.slli ra, 1", "slli ra, ra, 1"),
    ("c.lwsp ra, 252(sp)", "lw ra, 252(sp)"),
    ("c.lwsp t6, 0(sp)", "lw t6, 0(sp)"),
    ("c.jr ra", "jalr zero, 0(ra)"),
    ("c.jr t6", "jalr zero, 0(t6)"),
    ("c.mv a0, t6", "add a0, zero, t6"),
    ("c.ebreak", "ebreak"),
    ("c.jalr t0", "jalr ra, 0(t0)"),
    ("c.jalr ra", "jalr ra, 0(ra)"),
    ("c.add t0, t6", "add t0, t0, t6"),
    ("c.swsp t6, 252(sp)", "sw t6, 252(sp)"),
    ("c.swsp zero, 0(sp)", "sw zero, 0(sp)"),
]


@functools.cache
def rvc_pairs() -> list[tuple[int, int]]:
    short = assemble_each([c for c, _ in RVC_EQUIVALENTS], 2, rvc=True)
    long = assemble_each([w for _, w in RVC_EQUIVALENTS], 4, rvc=False)
    return list(zip(short, long, strict=True))


@pytest.mark.parametrize("index", range(len(RVC_EQUIVALENTS)),
                         ids=[c for c, _ in RVC_EQUIVALENTS])
def test_rvc_expansion_matches_gnu_as(index: int) -> None:
    half, word = rvc_pairs()[index]
    assert expand_compressed(half) == word, (
        f"{RVC_EQUIVALENTS[index][0]} ({half:#06x}) expands to "
        f"{expand_compressed(half):#010x}, as says {word:#010x}"
    )


# --- RVC: execution ---------------------------------------------------------------------

SP, RA, S0, S1, A0, A1, A5 = 2, 1, 8, 9, 10, 11, 15
RVC_CASES = [
    ("c.addi4spn a0, sp, 1020", {SP: 0x1000}, {A0: 0x13FC}),
    ("c.addi4spn s1, sp, 4", {SP: 0xFFFF_FFFC}, {S1: 0}),
    ("c.nop", {A0: 1}, {}),
    ("c.addi a0, -32", {A0: 0}, {A0: 0xFFFF_FFE0}),
    ("c.addi a0, 31", {A0: 1}, {A0: 32}),
    ("c.addi t0, 1", {T0: 0xFFFF_FFFF}, {T0: 0}),
    ("c.li a0, -32", {A0: 5}, {A0: 0xFFFF_FFE0}),
    ("c.li t6, 31", {}, {31: 31}),
    ("c.addi16sp sp, -512", {SP: 0x1_0000}, {SP: 0xFE00}),
    ("c.addi16sp sp, 496", {SP: 0}, {SP: 496}),
    ("c.addi16sp sp, 16", {SP: 0xFFFF_FFF0}, {SP: 0}),
    ("c.lui a0, 0xfffe0", {}, {A0: 0xFFFE_0000}),  # negative immediates
    ("c.lui a0, 0xfffff", {}, {A0: 0xFFFF_F000}),
    ("c.lui t0, 1", {}, {T0: 0x1000}),
    ("c.lui t6, 31", {}, {31: 0x1_F000}),
    ("c.srli a0, 31", {A0: 0x8000_0000}, {A0: 1}),
    ("c.srli s1, 1", {S1: 0xFFFF_FFFF}, {S1: 0x7FFF_FFFF}),
    ("c.srai a0, 31", {A0: 0x8000_0000}, {A0: 0xFFFF_FFFF}),
    ("c.srai a0, 4", {A0: 0x8000_0000}, {A0: 0xF800_0000}),
    ("c.srai a0, 31", {A0: 0x7FFF_FFFF}, {A0: 0}),
    ("c.andi a0, -32", {A0: 0xFFFF_FFFF}, {A0: 0xFFFF_FFE0}),
    ("c.andi a0, 15", {A0: 0x1234_5678}, {A0: 8}),
    ("c.sub a0, a1", {A0: 1, A1: 2}, {A0: 0xFFFF_FFFF}),
    ("c.xor a0, a1", {A0: 0xFF00_FF00, A1: 0x0FF0_0FF0}, {A0: 0xF0F0_F0F0}),
    ("c.or a0, a1", {A0: 0xFF00_FF00, A1: 0x0FF0_0FF0}, {A0: 0xFFF0_FFF0}),
    ("c.and a0, a1", {A0: 0xFF00_FF00, A1: 0x0FF0_0FF0}, {A0: 0x0F00_0F00}),
    ("c.slli a0, 31", {A0: 3}, {A0: 0x8000_0000}),
    ("c.slli t0, 4", {T0: 0x0FFF_FFFF}, {T0: 0xFFFF_FFF0}),
    ("c.mv a0, t6", {A0: 1, 31: 0x8000_0001}, {A0: 0x8000_0001}),
    ("c.add a0, a1", {A0: 0xFFFF_FFFF, A1: 2}, {A0: 1}),
    ("c.add t0, t0", {T0: 0x8000_0001}, {T0: 2}),
    ("c.lw a0, 124(s0)", {S0: DATA}, {A0: 0x8765_4321}),
    ("c.lw s0, 4(s0)", {S0: DATA + 120}, {S0: 0x8765_4321}),
    ("c.lwsp a0, 252(sp)", {SP: DATA - 128}, {A0: 0x8765_4321}),
    ("c.lwsp t6, 0(sp)", {SP: DATA + 124}, {31: 0x8765_4321}),
]


@pytest.mark.parametrize(("source", "regs", "changes"), RVC_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(RVC_CASES)])
def test_rvc_computation(source: str, regs: dict[int, int], changes: dict[int, int]) -> None:
    code = assemble(source)
    assert len(code) == 2
    r = run_ok(code, regs, mem={DATA + 124: (0x8765_4321).to_bytes(4, "little")})
    assert r.hart.x == regfile(regs, changes), source


@pytest.mark.parametrize(("source", "regs", "addr"), [
    ("c.sw a1, 124(s1)", {S1: DATA, A1: 0xDEAD_BEEF}, DATA + 124),
    ("c.sw a1, 0(s1)", {S1: DATA, A1: 0xDEAD_BEEF}, DATA),
    ("c.swsp a1, 252(sp)", {SP: DATA, A1: 0xDEAD_BEEF}, DATA + 252),
    ("c.swsp a1, 0(sp)", {SP: DATA, A1: 0xDEAD_BEEF}, DATA),
])
def test_rvc_store(source: str, regs: dict[int, int], addr: int) -> None:
    r = run_ok(assemble(source), regs, mem={addr - 4: b"\xaa" * 12})
    assert r.mem(addr - 4, 12) == b"\xaa" * 4 + bytes.fromhex("efbeadde") + b"\xaa" * 4
    assert r.hart.x == regfile(regs, {})


def test_rvc_j_forward_and_backward() -> None:
    code = assemble("c.j 2f\n1: c.li a0, 1\nc.j 3f\n2: c.j 1b\nc.li a0, 2\n3:")
    assert len(code) == 10
    r = run_ok(code)
    assert r[A0] == 1


def test_rvc_jal_links_pc_plus_2() -> None:
    r = run_ok(assemble("c.nop\nc.jal 1f\nc.li a0, 1\n1:"))
    assert (r[RA], r[A0]) == (CODE + 4, 0)


def test_rvc_jal_backward() -> None:
    r = run_ok(assemble("c.j 2f\n1: c.li a0, 1\nc.j 3f\n2: c.jal 1b\n3:"))
    assert (r[RA], r[A0]) == (CODE + 8, 1)


@pytest.mark.parametrize("target", [CODE + 4, CODE + 5])  # bit 0 is cleared
def test_rvc_jr(target: int) -> None:
    r = run_ok(assemble("c.jr a0\nc.li a1, 1\nc.li a2, 2"), {A0: target})
    assert (r[A1], r[12], r[RA]) == (0, 2, 0)


def test_rvc_jalr() -> None:
    r = run_ok(assemble("c.jalr a0\nc.li a1, 1\nc.li a2, 2"), {A0: CODE + 4})
    assert (r[RA], r[A1], r[12]) == (CODE + 2, 0, 2)


def test_rvc_jalr_through_ra() -> None:
    """c.jalr ra: the target is the old ra, then ra is the link."""
    r = run_ok(assemble("c.jalr ra\nc.li a1, 1\nc.li a2, 2"), {RA: CODE + 4})
    assert (r[RA], r[A1], r[12]) == (CODE + 2, 0, 2)


RVC_BRANCH_CASES = [
    ("c.beqz", 0, True), ("c.beqz", 1, False), ("c.beqz", 0x8000_0000, False),
    ("c.bnez", 0, False), ("c.bnez", 1, True), ("c.bnez", 0x8000_0000, True),
]  # fmt: skip


@pytest.mark.parametrize(("mnemonic", "value", "taken"), RVC_BRANCH_CASES)
def test_rvc_branch_forward(mnemonic: str, value: int, taken: bool) -> None:
    r = run_ok(assemble(f"{mnemonic} s0, 1f\nc.li a0, 1\n1:"), {S0: value})
    assert r[A0] == (0 if taken else 1)


@pytest.mark.parametrize(("mnemonic", "value", "taken"), RVC_BRANCH_CASES)
def test_rvc_branch_backward(mnemonic: str, value: int, taken: bool) -> None:
    r = run_ok(assemble(f"c.j 2f\n1: c.li a0, 1\nc.j 3f\n2: {mnemonic} a5, 1b\nc.li a0, 2\n3:"),
               {A5: value})
    assert r[A0] == (1 if taken else 2)


def test_mixed_16_and_32_bit_instructions() -> None:
    """32-bit instructions at pc = 2 mod 4, and branches between both sizes."""
    code = assemble(
        "c.li a0, 3\n"
        ".option norvc\n"
        "1: addi a1, a1, 10\n"
        ".option rvc\n"
        "c.addi a0, -1\n"
        "c.bnez a0, 1b\n"
        ".option norvc\n"
        "auipc a2, 0\n"
    )
    r = run_ok(code)
    assert (r[A0], r[A1], r[12]) == (0, 30, CODE + 10)


def test_rvc_ebreak() -> None:
    r = run(assemble("c.nop\nc.ebreak"))
    r.assert_trap(3, CODE + 2, CODE + 2)


RVC_RESERVED = [
    (0x0000, "all zeros (c.addi4spn, nzuimm=0)"),
    (0x0004, "c.addi4spn a1, nzuimm=0"),
    (0x2000, "c.fld (no D)"),
    (0x6000, "c.flw (no F)"),
    (0x8000, "quadrant 0, funct3=100"),
    (0xA000, "c.fsd (no D)"),
    (0xE000, "c.fsw (no F)"),
    (0x6101, "c.addi16sp, nzimm=0"),
    (0x6501, "c.lui a0, nzimm=0"),
    (0x9105, "c.srli a0, shamt[5]=1 on RV32"),
    (0x9505, "c.srai a0, shamt[5]=1 on RV32"),
    (0x1506, "c.slli a0, shamt[5]=1 on RV32"),
    (0x9D0D, "c.subw (RV64)"),
    (0x9D2D, "c.addw (RV64)"),
    (0x9D4D, "reserved CA slot"),
    (0x9D6D, "reserved CA slot"),
    (0x2002, "c.fldsp (no D)"),
    (0x4002, "c.lwsp, rd=0"),
    (0x6002, "c.flwsp (no F)"),
    (0x8002, "c.jr, rs1=0"),
    (0xA002, "c.fsdsp (no D)"),
    (0xE002, "c.fswsp (no F)"),
]


@pytest.mark.parametrize(("half", "what"), RVC_RESERVED, ids=[w for _, w in RVC_RESERVED])
def test_rvc_reserved_encoding_is_illegal(half: int, what: str) -> None:
    assert expand_compressed(half) == ILLEGAL
    # mtval holds just the 16 bits, not the halfword after them
    r = run([C_NOP, half, 0xFFFF], {A0: 9})
    r.assert_trap(2, CODE + 2, half)
    assert r[A0] == 9


RVC_HINTS = [
    (0x0081, "c.addi x1, 0"),
    (0x0015, "c.addi x0, 5"),
    (0x4015, "c.li x0, 5"),
    (0x6005, "c.lui x0, 1"),
    (0x8016, "c.mv x0, t0"),
    (0x9016, "c.add x0, t0"),
    (0x0016, "c.slli x0, 5"),
    (0x8001, "c.srli s0, 0"),
    (0x8401, "c.srai s0, 0"),
]


@pytest.mark.parametrize(("half", "what"), RVC_HINTS, ids=[w for _, w in RVC_HINTS])
def test_rvc_hints_are_no_ops(half: int, what: str) -> None:
    regs = {RA: 0x1234, T0: 0x8000_0001, S0: 0x8000_0000}
    r = run_ok([half], regs)
    assert r.hart.x == regfile(regs, {})


# --- traps ------------------------------------------------------------------------


def test_ecall() -> None:
    r = run([NOP, ECALL, addi(T2, 0, 1)])
    r.assert_trap(11, CODE + 4, 0)
    assert r[T2] == 0


def test_ebreak_reports_its_pc() -> None:
    r = run([C_NOP, EBREAK])
    r.assert_trap(3, CODE + 2, CODE + 2)


ILLEGAL_32 = [
    (0xFFFF_FFFF, "all ones"),
    (0x0000_0007, "opcode 0x07 (FP load)"),
    (0x0000_005B, "opcode 0x5b"),
    (0x0000_001B, "OP-IMM-32 (RV64)"),
    (rtype("add", 7, 5, 6) | (0x02 << 25), "OP with funct7=0x02"),
    (rtype("sll", 7, 5, 6) | (0x20 << 25), "sll with funct7=0x20"),
    (itype("slli", 7, 5, 1) | (0x20 << 25), "slli with imm[11:5]=0x20"),
    (itype("srli", 7, 5, 1) | (0x01 << 25), "srli with imm[11:5]=0x01 (shamt[5] on RV32)"),
    (enc_i(OP_JALR, 1, 1, 5, 0), "jalr with funct3=1"),
    (enc_i(OP_LOAD, 7, 3, 5, 0), "ld (RV64)"),
    (enc_i(OP_LOAD, 7, 6, 5, 0), "lwu (RV64)"),
    (enc_i(OP_LOAD, 7, 7, 5, 0), "load funct3=7"),
    (enc_s(OP_STORE, 3, 5, 6, 0), "sd (RV64)"),
    (enc_s(OP_STORE, 4, 5, 6, 0), "store funct3=4"),
    (enc_b(OP_BRANCH, 2, 5, 6, 8), "branch funct3=2"),
    (enc_b(OP_BRANCH, 3, 5, 6, 8), "branch funct3=3"),
    (enc_r(OP_AMO, 7, 3, 5, 6, 0), "amoadd.d (RV64)"),
    (enc_r(OP_AMO, 7, 2, 5, 6, 0x05 << 2), "AMO funct5=0x05"),
    (enc_r(OP_AMO, 7, 2, 5, 6, 0x02 << 2), "lr.w with rs2 != 0"),
    (enc_i(OP_MISC_MEM, 0, 2, 0, 0), "MISC-MEM funct3=2"),
    (enc_i(OP_SYSTEM, 0, 4, 0, 0), "SYSTEM funct3=4"),
    (0x1020_0073, "sret (no S-mode)"),
    (0x0020_0073, "uret"),
    (0x1200_0073, "sfence.vma"),
    (0x7B20_0073, "dret (not in debug mode)"),
    (0x0000_1073 | (0x180 << 20), "csrrw satp (no S-mode)"),
    (csrr(7, 0x7C0), "csrr of an unimplemented custom CSR"),
    (csrw(0x7C0, 5), "csrw of an unimplemented custom CSR"),
]


@pytest.mark.parametrize(("insn", "what"), ILLEGAL_32, ids=[w for _, w in ILLEGAL_32])
def test_illegal_instruction(insn: int, what: str) -> None:
    regs = {T0: DATA, T1: 1, T2: 0x5555}
    r = run([C_NOP, insn], regs)  # at pc = 2 mod 4
    r.assert_trap(2, CODE + 2, insn)
    assert r.hart.x == regfile(regs, {})


MISALIGNED = [
    ("lh", load("lh", T2, T0, 1), 4, 1),
    ("lhu", load("lhu", T2, T0, 3), 4, 3),
    ("lw+1", load("lw", T2, T0, 1), 4, 1),
    ("lw+2", load("lw", T2, T0, 2), 4, 2),
    ("lw+3", load("lw", T2, T0, 3), 4, 3),
    ("lw x0", load("lw", 0, T0, 2), 4, 2),
    ("sh", store("sh", T1, T0, 1), 6, 1),
    ("sw+2", store("sw", T1, T0, 2), 6, 2),
    ("sw+3", store("sw", T1, T0, 7), 6, 7),
    ("lr.w", lr(T2, T1), 4, 2),
    ("sc.w", sc(T2, T1, T0), 6, 2),
    *[(name, amo(name, T2, T1, T0), 6, 2) for name in AMO_OPS],
]


@pytest.mark.parametrize(("insn", "cause", "offset"), [m[1:] for m in MISALIGNED],
                         ids=[m[0] for m in MISALIGNED])
def test_misaligned_access_traps(insn: int, cause: int, offset: int) -> None:
    regs = {T0: DATA, T1: DATA + 2, T2: 0x5555}
    r = run([NOP, insn], regs, mem={DATA: b"\xaa" * 8})
    r.assert_trap(cause, CODE + 4, DATA + offset)
    assert r.hart.x == regfile(regs, {})
    assert r.mem(DATA, 8) == b"\xaa" * 8


ACCESS_FAULTS = [
    ("lb", load("lb", T2, T0, 0), 5, UNMAPPED),
    ("lhu", load("lhu", T2, T0, 2), 5, UNMAPPED + 2),
    ("lw", load("lw", T2, T0, -4), 5, UNMAPPED - 4),
    ("lw x0", load("lw", 0, T0, 0), 5, UNMAPPED),
    ("sb", store("sb", T1, T0, 1), 7, UNMAPPED + 1),
    ("sw", store("sw", T1, T0, 0), 7, UNMAPPED),
    ("lr.w", lr(T2, T0), 5, UNMAPPED),
    *[(name, amo(name, T2, T0, T1), 7, UNMAPPED) for name in AMO_OPS],
]


@pytest.mark.parametrize(("insn", "cause", "addr"), [a[1:] for a in ACCESS_FAULTS],
                         ids=[a[0] for a in ACCESS_FAULTS])
def test_access_fault(insn: int, cause: int, addr: int) -> None:
    regs = {T0: UNMAPPED, T1: 1, T2: 0x5555}
    r = run([NOP, insn], regs)
    r.assert_trap(cause, CODE + 4, addr)
    assert r.hart.x == regfile(regs, {})


@pytest.mark.parametrize("addr", [CODE + RAM_SIZE, CODE - 4])
def test_access_just_outside_ram_faults(addr: int) -> None:
    r = run([load("lw", T2, T0, 0)], {T0: addr})
    r.assert_trap(5, CODE, addr)
    r = run([store("sw", T2, T0, 0)], {T0: addr})
    r.assert_trap(7, CODE, addr)


def test_fetch_access_fault() -> None:
    r = run([NOP, jalr(1, T0, 0)], {T0: UNMAPPED})
    r.assert_trap(1, UNMAPPED, UNMAPPED)
    assert r[1] == CODE + 8


# mret handler: skip the trapping instruction, note mstatus in x20
SKIP_HANDLER = [
    csrr(20, MSTATUS),
    csrr(21, MEPC),
    addi(21, 21, 4),
    csrw(MEPC, 21),
    MRET,
]


@pytest.mark.parametrize("mie", [0, 1])
def test_trap_saves_mie_in_mpie_and_mret_restores_it(mie: int) -> None:
    code = [csrop("csrrsi", 0, MSTATUS, 8) if mie else NOP, ECALL, csrr(22, MSTATUS)]
    r = run_ok(code, handler=SKIP_HANDLER)
    assert r[20] == 0x1800 | (0x80 if mie else 0)  # in the handler: MIE=0, MPIE=old MIE, MPP=M
    assert r[22] == 0x80 | (0x08 if mie else 0)  # after mret: MIE=MPIE, MPIE=1, MPP=U
    assert (r.hart.mcause, r.hart.mepc) == (11, CODE + 8)


def test_mret_jumps_to_mepc() -> None:
    r = run([csrw(MEPC, T0), MRET], {T0: TARGET + 1}, mem={TARGET: code_bytes([SPIN])})
    assert r.hart.pc == TARGET  # mepc[0] is always 0


TVEC = 0x8000_3000
HANDLERS = code_bytes([SPIN] * 16)  # a spin loop in each vector slot


@pytest.mark.parametrize("irq", [3, 7, 11])
@pytest.mark.parametrize("vectored", [True, False])
def test_interrupt_vectoring(irq: int, vectored: bool) -> None:
    code = [
        addi(T2, 0, 1),
        csrop("csrrs", 0, MIE, T0),
        csrop("csrrsi", 0, MSTATUS, 8),
        addi(T2, 0, 2),  # the interrupt is taken before this
    ]
    hart = run([], mtvec=TVEC | vectored, handler=HANDLERS, budget=0).hart
    hart.bus.write_bytes(CODE, code_bytes(code))
    hart.flush_code()
    hart.x[T0] = 1 << irq
    hart.set_irq(irq, True)
    hart.run(20)
    assert hart.pc == (TVEC + 4 * irq if vectored else TVEC)
    assert (hart.mcause, hart.mepc, hart.mtval) == (0x8000_0000 | irq, CODE + 12, 0)
    assert hart.x[T2] == 1
    assert hart.mstatus & 0x88 == 0x80


def test_exceptions_use_the_base_in_vectored_mode() -> None:
    r = run([ECALL], mtvec=TVEC | 1, handler=HANDLERS)
    assert (r.hart.pc, r.hart.mcause) == (TVEC, 11)


def test_interrupt_priority_and_masking() -> None:
    hart = run([NOP] * 4, budget=0, handler=HANDLERS, mtvec=TVEC | 1).hart
    for irq in (3, 7, 11):
        hart.set_irq(irq, True)
    hart.mie = 0x888
    hart.run(2)  # global MIE is clear: nothing is taken
    assert hart.pc == CODE + 8
    hart.mstatus |= 0x8
    hart.run(1)
    assert hart.mcause == 0x8000_000B  # MEI before MSI before MTI
    hart.mie = 0x088
    hart.mstatus |= 0x8
    hart.run(1)
    assert hart.mcause == 0x8000_0003
    hart.mie = 0x080
    hart.mstatus |= 0x8
    hart.run(1)
    assert hart.mcause == 0x8000_0007


def test_wfi_waits_unless_an_enabled_interrupt_is_pending() -> None:
    r = run([WFI, addi(T2, 0, 1)])
    assert r.hart.waiting and r.hart.pc == CODE + 4 and r[T2] == 0
    hart = run([], budget=0).hart
    hart.bus.write_bytes(CODE, code_bytes([WFI, addi(T2, 0, 1), SPIN]))
    hart.flush_code()
    hart.mie = 0x80
    hart.set_irq(7, True)  # pending and enabled, globally disabled: wfi falls through
    hart.run(10)
    assert not hart.waiting and hart.x[T2] == 1


# --- Zicsr ---------------------------------------------------------------------------


def test_misa() -> None:
    r = run_ok([csrr(T2, MISA)])
    assert r[T2] == 0x4010_1105  # MXL=32, A, C, I, M, U


@pytest.mark.parametrize(("csr", "value"), [
    (MVENDORID, 0), (MARCHID, 0), (MIMPID, 0), (MHARTID, 0),
    (MSTATUS, 0x1800), (MIE, 0), (MIP, 0), (MTVEC, TRAP), (MSCRATCH, 0), (MEPC, 0),
    (MCAUSE, 0), (MTVAL, 0), (0x310, 0), (0x320, 0),
])
def test_csr_reset_values(csr: int, value: int) -> None:
    r = run_ok([csrr(T2, csr)], {T2: 0x5555})
    assert r[T2] == value


CSR_OP_CASES = [
    # name, src (register value or uimm), old mscratch, new mscratch
    ("csrrw", 0x1234_5678, 0xF0F0_F0F0, 0x1234_5678),
    ("csrrs", 0x0000_FFFF, 0xF0F0_F0F0, 0xF0F0_FFFF),
    ("csrrc", 0x0000_FFFF, 0xF0F0_F0F0, 0xF0F0_0000),
    ("csrrwi", 0x1F, 0xF0F0_F0F0, 0x1F),
    ("csrrsi", 0x0F, 0xF0F0_F0F0, 0xF0F0_F0FF),
    ("csrrci", 0x1F, 0xF0F0_F0FF, 0xF0F0_F0E0),
    ("csrrs", 0, 0xF0F0_F0F0, 0xF0F0_F0F0),
    ("csrrci", 0, 0xF0F0_F0F0, 0xF0F0_F0F0),
]


@pytest.mark.parametrize(("name", "src", "old", "new"), CSR_OP_CASES)
def test_csr_ops(name: str, src: int, old: int, new: int) -> None:
    operand = src if name.endswith("i") else T1
    regs = {T0: old, T1: src}
    r = run_ok([csrw(MSCRATCH, T0), csrop(name, T2, MSCRATCH, operand), csrr(28, MSCRATCH)],
               regs)
    assert (r[T2], r[28]) == (old, new)


def test_csrrw_rd_equals_rs1() -> None:
    r = run_ok([csrw(MSCRATCH, T0), csrop("csrrw", T0, MSCRATCH, T0), csrr(T2, MSCRATCH)],
               {T0: 77})
    assert (r[T0], r[T2]) == (77, 77)


READ_ONLY = [MVENDORID, MARCHID, MIMPID, MHARTID, CYCLE, TIME, INSTRET, 0xC80, 0xC81, 0xC82]


@pytest.mark.parametrize("csr", READ_ONLY, ids=[f"{c:#x}" for c in READ_ONLY])
def test_reading_read_only_csrs_with_x0_source_is_legal(csr: int) -> None:
    code = [csrr(T2, csr), csrop("csrrc", 28, csr, 0), csrop("csrrsi", 29, csr, 0),
            csrop("csrrci", 0, csr, 0)]
    run_ok(code)


@pytest.mark.parametrize("csr", READ_ONLY, ids=[f"{c:#x}" for c in READ_ONLY])
@pytest.mark.parametrize("name", ["csrrw", "csrrs", "csrrc", "csrrwi", "csrrsi", "csrrci"])
def test_writing_read_only_csr_is_illegal(csr: int, name: str) -> None:
    # A register source other than x0 writes even when its value is 0 (t1 = 0 here);
    # an immediate source writes when nonzero; csrrw/csrrwi write even with rd = x0.
    insn = csrop(name, 0 if name.startswith("csrrw") else T2, csr,
                 1 if name.endswith("i") else T1)
    regs = {T1: 0, T2: 0x5555}
    r = run([NOP, insn], regs)
    r.assert_trap(2, CODE + 4, insn)
    assert r.hart.x == regfile(regs, {})


@pytest.mark.parametrize(("csr", "written", "read"), [
    (MSTATUS, 0xFFFF_FFFF, 0x22_1888),  # MIE, MPIE, MPP, MPRV, TW
    (MSTATUS, 0, 0),  # MPP=U
    (MIE, 0xFFFF_FFFF, 0x888),  # MSIE, MTIE, MEIE
    (MIP, 0xFFFF_FFFF, 0),  # driven by devices only
    (MISA, 0, 0x4010_1105),
    (MEPC, 0x8000_0003, 0x8000_0002),  # IALIGN=16: only bit 0 is clear
    (MTVEC, TVEC | 1, TVEC | 1),
    (MCAUSE, 0x8000_0007, 0x8000_0007),
    (MTVAL, 0xDEAD_BEEF, 0xDEAD_BEEF),
])
def test_csr_write_read_back(csr: int, written: int, read: int) -> None:
    r = run_ok([csrw(csr, T0), csrr(T2, csr)], {T0: written})
    assert r[T2] == read


@pytest.mark.parametrize(("low", "high"), [(MINSTRET, MINSTRETH), (MCYCLE, MCYCLEH),
                                           (INSTRET, 0xC82), (CYCLE, 0xC80)])
def test_counters_count_instructions(low: int, high: int) -> None:
    r = run_ok([csrr(T0, low), NOP, C_NOP, addi(T2, 0, 1), NOP, csrr(T1, low), csrr(28, high)])
    assert r[T1] - r[T0] == 5
    assert r[28] == 0


def test_minstret_write() -> None:
    """The writing instruction does not count; the next one reads the written value."""
    code = [csrw(MINSTRET, T0), csrr(T1, MINSTRET), NOP, csrr(T2, MINSTRET)]
    r = run_ok(code, {T0: 1000})
    assert (r[T1], r[T2]) == (1000, 1002)


def test_minstret_carries_into_minstreth() -> None:
    code = [csrw(MINSTRETH, 28), csrw(MINSTRET, T0), NOP, NOP, csrr(T1, MINSTRETH),
            csrr(T2, MINSTRET), csrr(29, INSTRET)]
    r = run_ok(code, {T0: 0xFFFF_FFFF, 28: 5})
    assert (r[T1], r[T2], r[29]) == (6, 2, 3)


def test_mcycle_write() -> None:
    code = [csrw(MCYCLEH, 28), csrw(MCYCLE, T0), csrr(T1, MCYCLE), csrr(T2, MCYCLEH)]
    r = run_ok(code, {T0: 0xFFFF_FFF0, 28: 7})
    assert 0xFFFF_FFF0 <= r[T1] <= 0xFFFF_FFF1 and r[T2] == 7


def test_csrrs_x0_does_not_write_a_counter() -> None:
    """csrrs rd, minstret, x0 reads without writing: the counter keeps running."""
    code = [csrr(T0, MINSTRET), csrop("csrrs", 0, MINSTRET, 0), csrop("csrrc", 0, MINSTRET, 0),
            csrr(T1, MINSTRET)]
    r = run_ok(code)
    assert r[T1] - r[T0] == 3


def test_a_trapping_instruction_does_not_retire() -> None:
    """ecall and faults take a clock step but minstret does not count them."""
    ecall = 0x0000_0073
    code = [csrr(T0, MINSTRET), ecall]
    r = run(code, handler=[csrr(T1, MINSTRET), SPIN], budget=4)
    assert r[T1] - r[T0] == 1  # only the first csrr retired before the handler's csrr
    assert r.hart.clock.icount == 4  # csrr, ecall (trapped), csrr, one spin
