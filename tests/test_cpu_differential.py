"""Differential test of the hart against Unicorn (QEMU's RISC-V TCG) on random code.

20,000 seeded random sequences of RV32IMAC instructions run on our `Hart` and
on Unicorn's RISCV32 from identical registers and memory; afterwards all 32
registers, mscratch, pc and the data area must agree.

Generated code never traps and always terminates: loads, stores and AMOs are
aligned and address a data area through base registers that nothing else
writes (sp and s0), control flow only goes forward to an item boundary (so a
multi-instruction item such as `auipc; jalr` or `lr; ...; sc` is atomic), and
RVC HINT encodings (which QEMU versions decode differently) are avoided -- the
ISA tests cover those.  Only the first mismatch of a chunk is reported, with
the sequence disassembled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from unicorn import UC_ARCH_RISCV, UC_MODE_RISCV32, Uc, UcError
from unicorn.riscv_const import (
    UC_RISCV_REG_MSCRATCH,
    UC_RISCV_REG_MTVEC,
    UC_RISCV_REG_PC,
    UC_RISCV_REG_X0,
)

from emud.clock import VirtualClock
from emud.cpu.decode import (
    OP_AMO,
    OP_AUIPC,
    OP_BRANCH,
    OP_IMM,
    OP_JAL,
    OP_JALR,
    OP_LOAD,
    OP_LUI,
    OP_OP,
    OP_STORE,
    OP_SYSTEM,
    enc_b,
    enc_i,
    enc_j,
    enc_r,
    enc_s,
    enc_u,
)
from emud.cpu.hart import Hart
from emud.memory import AddressSpace, Ram

try:
    from emud.cpu.disasm import disassemble
except ImportError:  # pragma: no cover - the disassembler is optional here
    def disassemble(insn: int, pc: int = 0) -> str:
        return f".insn {insn:#x}"

M = 0xFFFF_FFFF
CODE = 0x8000_0000
DATA = 0x8000_4000  # on its own pages, away from the code
DATA_SIZE = 0x100  # small, so that accesses often overlap
TRAP = 0x8000_6000  # mtvec on both sides: a `j .`, so a trap shows up as a pc mismatch
RAM_SIZE = 64 * 1024
SPIN = 0x0000_006F  # j .
MSCRATCH = 0x340

SP_VALUE, S0_VALUE = DATA, DATA + 0x80  # c.lwsp/c.swsp and c.lw/c.sw reach DATA_SIZE
BASES = (2, 8)  # sp and s0: the base registers of memory accesses, never written
DEST = [r for r in range(32) if r not in BASES]  # includes x0 (writes are dropped)
DEST_NZ = [r for r in DEST if r]
C_DEST = [r for r in range(9, 16)]  # x8..x15 register forms, minus s0
C_SRC = list(range(8, 16))

CHUNKS = 20
SEQUENCES_PER_CHUNK = 1000  # 20,000 sequences in all
ITEMS_PER_SEQUENCE = 24  # about 30 instructions

# --- encoders (written independently of emud.cpu.decode's RVC expansion) ----------------

R_BASE = {"add": (0, 0), "sub": (0, 0x20), "sll": (1, 0), "slt": (2, 0), "sltu": (3, 0),
          "xor": (4, 0), "srl": (5, 0), "sra": (5, 0x20), "or": (6, 0), "and": (7, 0)}
R_MUL = {"mul": (0, 1), "mulh": (1, 1), "mulhsu": (2, 1), "mulhu": (3, 1),
         "div": (4, 1), "divu": (5, 1), "rem": (6, 1), "remu": (7, 1)}
I_OPS = {"addi": 0, "slti": 2, "sltiu": 3, "xori": 4, "ori": 6, "andi": 7}
SHIFTS = {"slli": (1, 0), "srli": (5, 0), "srai": (5, 0x20)}
LOADS = {"lb": (0, 1), "lh": (1, 2), "lw": (2, 4), "lbu": (4, 1), "lhu": (5, 2)}
STORES = {"sb": (0, 1), "sh": (1, 2), "sw": (2, 4)}
BRANCHES = {"beq": 0, "bne": 1, "blt": 4, "bge": 5, "bltu": 6, "bgeu": 7}
AMOS = {"amoadd": 0x00, "amoswap": 0x01, "amoxor": 0x04, "amoor": 0x08, "amoand": 0x0C,
        "amomin": 0x10, "amomax": 0x14, "amominu": 0x18, "amomaxu": 0x1C}


def bits(value: int, hi: int, lo: int) -> int:
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def c_addi4spn(rdp: int, nzuimm: int) -> int:
    return (bits(nzuimm, 5, 4) << 11 | bits(nzuimm, 9, 6) << 7 | bits(nzuimm, 2, 2) << 6
            | bits(nzuimm, 3, 3) << 5 | (rdp - 8) << 2)


def c_lw_sw(funct3: int, rp: int, basep: int, off: int) -> int:
    return (funct3 << 13 | bits(off, 5, 3) << 10 | (basep - 8) << 7 | bits(off, 2, 2) << 6
            | bits(off, 6, 6) << 5 | (rp - 8) << 2)


def c_ci(funct3: int, rd: int, imm6: int, quadrant: int) -> int:
    """CI format: addi, li, lui, slli (imm6 is the 6-bit field, bit 5 -> insn[12])."""
    return funct3 << 13 | bits(imm6, 5, 5) << 12 | rd << 7 | bits(imm6, 4, 0) << 2 | quadrant


def c_addi16sp(imm: int) -> int:
    return (0b011 << 13 | bits(imm, 9, 9) << 12 | 2 << 7 | bits(imm, 4, 4) << 6
            | bits(imm, 6, 6) << 5 | bits(imm, 8, 7) << 3 | bits(imm, 5, 5) << 2 | 1)


def c_cb_alu(op2: int, rdp: int, imm6: int) -> int:
    """c.srli (0), c.srai (1), c.andi (2)."""
    return (0b100 << 13 | bits(imm6, 5, 5) << 12 | op2 << 10 | (rdp - 8) << 7
            | bits(imm6, 4, 0) << 2 | 1)


def c_ca(funct2: int, rdp: int, rs2p: int) -> int:
    """c.sub (0), c.xor (1), c.or (2), c.and (3)."""
    return 0b100011 << 10 | (rdp - 8) << 7 | funct2 << 5 | (rs2p - 8) << 2 | 1


def c_cj(funct3: int, off: int) -> int:
    """c.jal (1) and c.j (5)."""
    return (funct3 << 13 | bits(off, 11, 11) << 12 | bits(off, 4, 4) << 11 | bits(off, 9, 8) << 9
            | bits(off, 10, 10) << 8 | bits(off, 6, 6) << 7 | bits(off, 7, 7) << 6
            | bits(off, 3, 1) << 3 | bits(off, 5, 5) << 2 | 1)


def c_branch(funct3: int, rs1p: int, off: int) -> int:
    """c.beqz (6) and c.bnez (7)."""
    return (funct3 << 13 | bits(off, 8, 8) << 12 | bits(off, 4, 3) << 10 | (rs1p - 8) << 7
            | bits(off, 7, 6) << 5 | bits(off, 2, 1) << 3 | bits(off, 5, 5) << 2 | 1)


def c_lwsp(rd: int, off: int) -> int:
    return (0b010 << 13 | bits(off, 5, 5) << 12 | rd << 7 | bits(off, 4, 2) << 4
            | bits(off, 7, 6) << 2 | 2)


def c_swsp(rs2: int, off: int) -> int:
    return 0b110 << 13 | bits(off, 5, 2) << 9 | bits(off, 7, 6) << 7 | rs2 << 2 | 2


def c_cr(bit12: int, rd: int, rs2: int) -> int:
    """c.jr (0, rs1, 0), c.mv (0, rd, rs2), c.jalr (1, rs1, 0), c.add (1, rd, rs2)."""
    return 0b100 << 13 | bit12 << 12 | rd << 7 | rs2 << 2 | 2


def test_rvc_encoders_match_gnu_as() -> None:
    """The generator's own RVC encoders, against the assembler."""
    from test_isa import assemble_each

    cases = [
        ("c.addi4spn a5, sp, 1020", c_addi4spn(15, 1020)),
        ("c.addi4spn s1, sp, 4", c_addi4spn(9, 4)),
        ("c.lw a0, 124(s0)", c_lw_sw(0b010, 10, 8, 124)),
        ("c.sw s1, 64(a5)", c_lw_sw(0b110, 9, 15, 64)),
        ("c.addi t6, -32", c_ci(0b000, 31, -32, 1)),
        ("c.li ra, 31", c_ci(0b010, 1, 31, 1)),
        ("c.lui t0, 0xfffe1", c_ci(0b011, 5, -31, 1)),
        ("c.slli a0, 31", c_ci(0b000, 10, 31, 2)),
        ("c.addi16sp sp, -512", c_addi16sp(-512)),
        ("c.addi16sp sp, 496", c_addi16sp(496)),
        ("c.addi16sp sp, 80", c_addi16sp(80)),
        ("c.srli s1, 31", c_cb_alu(0, 9, 31)),
        ("c.srai a5, 1", c_cb_alu(1, 15, 1)),
        ("c.andi a0, -21", c_cb_alu(2, 10, -21)),
        ("c.sub s1, a5", c_ca(0, 9, 15)),
        ("c.xor a0, s0", c_ca(1, 10, 8)),
        ("c.or a1, a2", c_ca(2, 11, 12)),
        ("c.and a3, a4", c_ca(3, 13, 14)),
        ("c.jal .+1366", c_cj(1, 1366)),
        ("c.j .-2048", c_cj(5, -2048)),
        ("c.j .+2046", c_cj(5, 2046)),
        ("c.beqz s0, .-256", c_branch(6, 8, -256)),
        ("c.bnez a5, .+170", c_branch(7, 15, 170)),
        ("c.lwsp t6, 252(sp)", c_lwsp(31, 252)),
        ("c.lwsp ra, 132(sp)", c_lwsp(1, 132)),
        ("c.swsp t6, 252(sp)", c_swsp(31, 252)),
        ("c.swsp zero, 68(sp)", c_swsp(0, 68)),
        ("c.jr t6", c_cr(0, 31, 0)),
        ("c.mv a0, t6", c_cr(0, 10, 31)),
        ("c.jalr ra", c_cr(1, 1, 0)),
        ("c.add t0, ra", c_cr(1, 5, 1)),
        ("c.nop", 0x0001),
    ]
    theirs = assemble_each([src for src, _ in cases], 2, rvc=True)
    for (src, ours), word in zip(cases, theirs, strict=True):
        assert ours == word, f"{src}: {ours:#06x} != as {word:#06x}"


# --- sequence generation -----------------------------------------------------------------


@dataclass
class Jump:
    """A control transfer to the start of item `target`; `make(offset)` encodes it."""

    make: Callable[[int], int]
    size: int
    target: int
    reach: int = 4096  # the encodable offsets are -reach .. reach-2


Part = int | Jump
Item = list[Part]

EDGE_VALUES = [0, 1, 2, 3, 31, 32, 0x7FF, 0x800, 0xFFFF_FFFF, 0xFFFF_FFFE, 0x8000_0000,
               0x8000_0001, 0x7FFF_FFFF, 0xFFFF_F800, 0x0000_FFFF, 0xFFFF_0000]
IMM12_EDGES = [0, 1, -1, 2047, -2048, 31, 32, -32]


class Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.kinds: list[tuple[str, Callable[[int, int], Item], int]] = [
            ("alu", self.alu, 14),
            ("alu-imm", self.alu_imm, 10),
            ("shift-imm", self.shift_imm, 4),
            ("mul-div", self.mul_div, 10),
            ("lui-auipc", self.lui_auipc, 3),
            ("load", self.load, 8),
            ("store", self.store, 8),
            ("branch", self.branch, 6),
            ("jal", self.jal, 2),
            ("jalr", self.jalr, 2),
            ("amo", self.amo, 5),
            ("lr-sc", self.lr_sc, 2),
            ("fence", lambda i, n: [0x0FF0_000F], 1),
            ("csr", self.csr, 2),
            ("c.alu", self.c_alu, 10),
            ("c.mem", self.c_mem, 6),
            ("c.jump", self.c_jump, 4),
            ("c.jr-jalr", self.c_jr_jalr, 1),
            ("c.addi16sp", self.c_addi16sp_pair, 1),
        ]
        self.weights = [w for _, _, w in self.kinds]

    def sequence(self, items: int) -> tuple[list[Item], list[str]]:
        chosen = self.rng.choices(self.kinds, self.weights, k=items)
        return [make(i, items) for i, (_, make, _) in enumerate(chosen)], [k for k, _, _ in chosen]

    # helpers
    def reg(self) -> int:
        return self.rng.randrange(32)

    def target(self, i: int, n: int) -> int:
        """A later item (n is the end of the sequence), usually a near one."""
        if self.rng.random() < 0.7:
            return min(n, i + self.rng.randint(1, 3))
        return self.rng.randint(i + 1, n)

    def imm12(self) -> int:
        if self.rng.random() < 0.3:
            return self.rng.choice(IMM12_EDGES)
        return self.rng.randint(-2048, 2047)

    def mem_operand(self, size: int) -> tuple[int, int]:
        """(base register, offset) of an aligned access inside the data area."""
        base = self.rng.choice(BASES)
        addr = DATA + self.rng.randrange(0, DATA_SIZE, size)
        return base, addr - (SP_VALUE if base == 2 else S0_VALUE)

    # 32-bit instructions
    def alu(self, i: int, n: int) -> Item:
        f3, f7 = R_BASE[self.rng.choice(list(R_BASE))]
        return [enc_r(OP_OP, self.rng.choice(DEST), f3, self.reg(), self.reg(), f7)]

    def mul_div(self, i: int, n: int) -> Item:
        f3, f7 = R_MUL[self.rng.choice(list(R_MUL))]
        return [enc_r(OP_OP, self.rng.choice(DEST), f3, self.reg(), self.reg(), f7)]

    def alu_imm(self, i: int, n: int) -> Item:
        f3 = I_OPS[self.rng.choice(list(I_OPS))]
        return [enc_i(OP_IMM, self.rng.choice(DEST), f3, self.reg(), self.imm12())]

    def shift_imm(self, i: int, n: int) -> Item:
        f3, f7 = SHIFTS[self.rng.choice(list(SHIFTS))]
        shamt = self.rng.choice([0, 1, 31, self.rng.randrange(32)])
        return [enc_i(OP_IMM, self.rng.choice(DEST), f3, self.reg(), f7 << 5 | shamt)]

    def lui_auipc(self, i: int, n: int) -> Item:
        op = self.rng.choice([OP_LUI, OP_AUIPC])
        return [enc_u(op, self.rng.choice(DEST), self.rng.getrandbits(20) << 12)]

    def load(self, i: int, n: int) -> Item:
        f3, size = LOADS[self.rng.choice(list(LOADS))]
        base, off = self.mem_operand(size)
        return [enc_i(OP_LOAD, self.rng.choice(DEST), f3, base, off)]

    def store(self, i: int, n: int) -> Item:
        f3, size = STORES[self.rng.choice(list(STORES))]
        base, off = self.mem_operand(size)
        return [enc_s(OP_STORE, f3, base, self.reg(), off)]

    def branch(self, i: int, n: int) -> Item:
        f3 = BRANCHES[self.rng.choice(list(BRANCHES))]
        rs1 = self.reg()
        rs2 = rs1 if self.rng.random() < 0.1 else self.reg()
        return [Jump(lambda off: enc_b(OP_BRANCH, f3, rs1, rs2, off), 4, self.target(i, n))]

    def jal(self, i: int, n: int) -> Item:
        rd = self.rng.choice(DEST)
        return [Jump(lambda off: enc_j(OP_JAL, rd, off), 4, self.target(i, n))]

    def jalr(self, i: int, n: int) -> Item:
        """auipc t, 0; jalr rd, off(t) -- off possibly odd (bit 0 is cleared)."""
        t, rd, odd = self.rng.choice(DEST_NZ), self.rng.choice(DEST), self.rng.getrandbits(1)
        return [enc_u(OP_AUIPC, t, 0),
                Jump(lambda off: enc_i(OP_JALR, rd, 0, t, off + 4 + odd), 4, self.target(i, n))]

    def amo(self, i: int, n: int) -> Item:
        t = self.rng.choice(DEST_NZ)
        base, off = self.mem_operand(4)
        f5 = AMOS[self.rng.choice(list(AMOS))]
        aqrl = self.rng.randrange(4)
        return [enc_i(OP_IMM, t, 0, base, off),
                enc_r(OP_AMO, self.rng.choice(DEST), 2, t, self.reg(), f5 << 2 | aqrl)]

    def lr_sc(self, i: int, n: int) -> Item:
        """addi t, base, off; lr.w rd, (t); 0-2 ALU ops; sc.w rd2, rs2, (t).

        One time in eight the SC goes to another word than the LR's (through u), and one
        time in eight there is no LR at all: the SC must then fail and leave memory alone.
        """
        rng = self.rng
        t, u = rng.sample(DEST_NZ, 2)
        others = [r for r in DEST if r not in (t, u)]
        base, off = self.mem_operand(4)
        item: Item = [enc_i(OP_IMM, t, 0, base, off)]
        roll = rng.random()
        sc_base = t
        if roll < 0.25:
            other = self.mem_operand(4)
            item.append(enc_i(OP_IMM, u, 0, *other))
            sc_base = u if other != (base, off) else t
        if roll >= 0.125:
            item.append(enc_r(OP_AMO, rng.choice(others), 2, t, 0, 0x02 << 2 | rng.randrange(4)))
        for _ in range(rng.randrange(3)):
            f3, f7 = R_BASE[rng.choice(list(R_BASE))]
            item.append(enc_r(OP_OP, rng.choice(others), f3, self.reg(), self.reg(), f7))
        item.append(enc_r(OP_AMO, rng.choice(DEST), 2, sc_base, self.reg(),
                          0x03 << 2 | rng.randrange(4)))
        return item

    def csr(self, i: int, n: int) -> Item:
        """A Zicsr instruction on mscratch (the one CSR both sides treat alike)."""
        f3 = self.rng.choice([1, 2, 3, 5, 6, 7])
        src = self.rng.choice([0, self.reg()])  # a register, or a 5-bit immediate
        return [enc_i(OP_SYSTEM, self.rng.choice(DEST), f3, src, MSCRATCH)]

    # RVC
    def c_alu(self, i: int, n: int) -> Item:
        rng = self.rng
        nz6 = rng.choice([v for v in range(-32, 32) if v])
        kind = rng.randrange(12)
        if kind == 0:
            return [c_addi4spn(rng.choice(C_DEST), 4 * rng.randint(1, 255))]
        if kind == 1:
            return [c_ci(0b000, rng.choice(DEST_NZ), nz6, 1)]  # c.addi
        if kind == 2:
            return [c_ci(0b010, rng.choice(DEST_NZ), rng.randint(-32, 31), 1)]  # c.li
        if kind == 3:
            return [c_ci(0b011, rng.choice(DEST_NZ), nz6, 1)]  # c.lui (sp is never a DEST)
        if kind == 4:
            return [c_cb_alu(rng.randrange(2), rng.choice(C_DEST), rng.randint(1, 31))]
        if kind == 5:
            return [c_cb_alu(2, rng.choice(C_DEST), rng.randint(-32, 31))]  # c.andi
        if kind in (6, 7):
            return [c_ca(rng.randrange(4), rng.choice(C_DEST), rng.choice(C_SRC))]
        if kind == 8:
            return [c_ci(0b000, rng.choice(DEST_NZ), rng.randint(1, 31), 2)]  # c.slli
        if kind == 9:
            return [c_cr(0, rng.choice(DEST_NZ), rng.randint(1, 31))]  # c.mv
        if kind == 10:
            return [c_cr(1, rng.choice(DEST_NZ), rng.randint(1, 31))]  # c.add
        return [0x0001]  # c.nop

    def c_mem(self, i: int, n: int) -> Item:
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:  # c.lw rd', off(s0)
            return [c_lw_sw(0b010, rng.choice(C_DEST), 8, 4 * rng.randrange(32))]
        if kind == 1:  # c.sw rs2', off(s0)
            return [c_lw_sw(0b110, rng.choice(C_SRC), 8, 4 * rng.randrange(32))]
        if kind == 2:
            return [c_lwsp(rng.choice(DEST_NZ), 4 * rng.randrange(64))]
        return [c_swsp(rng.randrange(32), 4 * rng.randrange(64))]

    def c_jump(self, i: int, n: int) -> Item:
        rng = self.rng
        kind = rng.randrange(3)
        if kind == 0:
            funct3 = rng.choice([1, 5])  # c.jal, c.j
            return [Jump(lambda off: c_cj(funct3, off), 2, self.target(i, n), reach=2048)]
        funct3, rs1p = rng.choice([6, 7]), rng.choice(C_SRC)
        target = min(n, i + rng.randint(1, 3))  # +-256 bytes: stay near
        return [Jump(lambda off: c_branch(funct3, rs1p, off), 2, target, reach=256)]

    def c_jr_jalr(self, i: int, n: int) -> Item:
        """auipc t, 0; addi t, t, off; c.jr t / c.jalr t."""
        t, link = self.rng.choice(DEST_NZ), self.rng.getrandbits(1)
        return [enc_u(OP_AUIPC, t, 0),
                Jump(lambda off: enc_i(OP_IMM, t, 0, t, off + 4), 4, self.target(i, n)),
                c_cr(link, t, 0)]

    def c_addi16sp_pair(self, i: int, n: int) -> Item:
        imm = 16 * self.rng.choice([v for v in range(-31, 32) if v])
        return [c_addi16sp(imm), c_addi16sp(-imm)]


def part_size(part: Part) -> int:
    return part.size if isinstance(part, Jump) else (4 if part & 3 == 3 else 2)


def lay_out(items: list[Item]) -> tuple[bytes, list[tuple[int, int]]]:
    """Code bytes for the items, and the (pc, insn) list of every instruction."""
    starts, pc = [], CODE
    for item in items:
        starts.append(pc)
        pc += sum(part_size(p) for p in item)
    starts.append(pc)  # the end
    listing: list[tuple[int, int]] = []
    pc = CODE
    for item in items:
        for part in item:
            if isinstance(part, Jump):
                offset = starts[part.target] - pc
                assert 0 < offset < part.reach, "jump out of range: generator bug"
                insn = part.make(offset)
            else:
                insn = part
            listing.append((pc, insn))
            pc += part_size(part)
    code = b"".join(insn.to_bytes(4 if insn & 3 == 3 else 2, "little") for _, insn in listing)
    return code, listing


def initial_registers(rng: random.Random) -> list[int]:
    """x0..x31, then mscratch."""
    regs = [0] * 33
    for r in range(1, 33):
        roll = rng.random()
        if roll < 0.35:
            regs[r] = rng.choice(EDGE_VALUES)
        elif roll < 0.55:
            regs[r] = rng.randint(-64, 64) & M
        else:
            regs[r] = rng.getrandbits(32)
    regs[2], regs[8] = SP_VALUE, S0_VALUE
    return regs


Outcome = tuple[list[int], int, bytes]  # x0..x31 and mscratch, pc, data area

# --- the two machines -------------------------------------------------------------------


class Ours:
    def __init__(self) -> None:
        self.hart = Hart(AddressSpace(Ram(CODE, RAM_SIZE)), VirtualClock())
        self.hart.bus.write_bytes(TRAP, SPIN.to_bytes(4, "little"))

    def run(self, code: bytes, data: bytes, regs: list[int], count: int) -> Outcome:
        hart = self.hart
        hart.bus.write_bytes(CODE, code + SPIN.to_bytes(4, "little"))
        hart.bus.write_bytes(DATA, data)
        hart.reset(CODE)
        hart.mtvec = TRAP
        hart.x[:] = regs[:32]
        hart.mscratch = regs[32]
        hart.run(count)  # control flow only goes forward, then spins at the end
        return [*hart.x, hart.mscratch], hart.pc, hart.bus.read_bytes(DATA, DATA_SIZE)


class Theirs:
    REGS = [UC_RISCV_REG_X0 + r for r in range(32)] + [UC_RISCV_REG_MSCRATCH]

    def __init__(self) -> None:
        self.uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
        self.uc.mem_map(CODE, RAM_SIZE)
        self.uc.mem_write(TRAP, SPIN.to_bytes(4, "little"))

    def run(self, code: bytes, data: bytes, regs: list[int], count: int) -> Outcome:
        uc = self.uc
        uc.mem_write(CODE, code + SPIN.to_bytes(4, "little"))
        uc.ctl_remove_cache(CODE, CODE + len(code) + 4)  # it does not notice rewritten code
        uc.mem_write(DATA, data)
        uc.reg_write(UC_RISCV_REG_MTVEC, TRAP)
        for reg, value in zip(self.REGS[1:], regs[1:], strict=True):
            uc.reg_write(reg, value)
        end = CODE + len(code)
        try:
            uc.emu_start(CODE, end, count=count)
        except UcError as exc:
            raise AssertionError(f"unicorn: {exc}") from exc
        x = [uc.reg_read(reg) & M for reg in self.REGS]
        return x, uc.reg_read(UC_RISCV_REG_PC) & M, bytes(uc.mem_read(DATA, DATA_SIZE))


ABI = ["zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3",
       "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
       "t3", "t4", "t5", "t6"]
NAMES = [*ABI, "mscratch"]


def describe(label: str, listing: list[tuple[int, int]], regs: list[int], data: bytes,
             ours: Outcome, theirs: Outcome,
             hart: Hart) -> str:
    lines = [f"{label}: our hart and unicorn disagree", "program:"]
    for pc, insn in listing:
        width = 8 if insn & 3 == 3 else 4
        lines.append(f"  {pc:08x}:  {insn:0{width}x}  {disassemble(insn, pc)}")
    lines.append(f"  {listing[-1][0] + (4 if listing[-1][1] & 3 == 3 else 2):08x}:  (end)")
    lines.append("initial registers: " + " ".join(
        f"{NAMES[r]}={v:#x}" for r, v in enumerate(regs) if r))
    (ox, opc, omem), (tx, tpc, tmem) = ours, theirs
    if opc != tpc:
        lines.append(f"pc: ours {opc:#010x}, unicorn {tpc:#010x} "
                     f"(our mcause={hart.mcause:#x} mepc={hart.mepc:#x} mtval={hart.mtval:#x})")
    for r in range(33):
        if ox[r] != tx[r]:
            lines.append(f"{NAMES[r]}: ours {ox[r]:#010x}, unicorn {tx[r]:#010x}")
    for off in range(0, DATA_SIZE, 4):
        if omem[off : off + 4] != tmem[off : off + 4]:
            lines.append(f"mem {DATA + off:#010x}: ours {omem[off:off + 4].hex()}, "
                         f"unicorn {tmem[off:off + 4].hex()} "
                         f"(was {data[off:off + 4].hex()})")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def machines() -> tuple[Ours, Theirs]:
    return Ours(), Theirs()


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_sequences_match_unicorn(chunk: int, machines: tuple[Ours, Theirs]) -> None:
    ours_machine, theirs_machine = machines
    rng = random.Random(0x5EED_0000 + chunk)
    gen = Generator(rng)
    seen_kinds: set[str] = set()
    for index in range(SEQUENCES_PER_CHUNK):
        items, kinds = gen.sequence(ITEMS_PER_SEQUENCE)
        seen_kinds.update(kinds)
        code, listing = lay_out(items)
        regs = initial_registers(rng)
        data = rng.randbytes(DATA_SIZE)
        count = len(listing)
        ours = ours_machine.run(code, data, regs, count)
        theirs = theirs_machine.run(code, data, regs, count)
        if ours != theirs:
            label = f"chunk {chunk}, sequence {index}"
            pytest.fail(describe(label, listing, regs, data, ours, theirs, ours_machine.hart),
                        pytrace=False)
        end = CODE + len(code)
        assert ours[1] == end, f"chunk {chunk}, sequence {index}: both stopped at {ours[1]:#x}"
    assert seen_kinds == {k for k, _, _ in gen.kinds}
