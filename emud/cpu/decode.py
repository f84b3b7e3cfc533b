"""Pure instruction-format helpers: field extraction, RVC expansion, encoders.

Compressed instructions are expanded to their 32-bit equivalent, so the
interpreter, the translator and the disassembler share one decoder for the
base ISA.
"""

from __future__ import annotations

import functools

MASK32 = 0xFFFF_FFFF


def sext(value: int, bits: int) -> int:
    """Sign-extend a `bits`-wide field to a Python int."""
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)


# --- 32-bit instruction fields --------------------------------------------------


def rd(insn: int) -> int:
    return (insn >> 7) & 31


def rs1(insn: int) -> int:
    return (insn >> 15) & 31


def rs2(insn: int) -> int:
    return (insn >> 20) & 31


def funct3(insn: int) -> int:
    return (insn >> 12) & 7


def funct7(insn: int) -> int:
    return insn >> 25


def imm_i(insn: int) -> int:
    return sext(insn >> 20, 12)


def imm_s(insn: int) -> int:
    return sext(((insn >> 25) << 5) | ((insn >> 7) & 31), 12)


def imm_b(insn: int) -> int:
    return sext(
        ((insn >> 31) << 12)
        | (((insn >> 7) & 1) << 11)
        | (((insn >> 25) & 0x3F) << 5)
        | (((insn >> 8) & 0xF) << 1),
        13,
    )


def imm_u(insn: int) -> int:
    return insn & 0xFFFF_F000


def imm_j(insn: int) -> int:
    return sext(
        ((insn >> 31) << 20)
        | (((insn >> 12) & 0xFF) << 12)
        | (((insn >> 20) & 1) << 11)
        | (((insn >> 21) & 0x3FF) << 1),
        21,
    )


def insn_length(first_halfword: int) -> int:
    return 4 if first_halfword & 3 == 3 else 2


def starts_overlapping(addr: int, size: int) -> range:
    """The pcs where an instruction overlapping the bytes [addr, addr+size) may start:
    with RVC, instructions are 2 or 4 bytes on 2-byte boundaries, so from 2 bytes
    before the first byte's halfword to the last byte."""
    return range((addr & ~1) - 2, addr + size, 2)


# --- encoders (used to expand RVC and by tests) ---------------------------------


def enc_r(opcode: int, rd_: int, f3: int, rs1_: int, rs2_: int, f7: int) -> int:
    return (f7 << 25) | (rs2_ << 20) | (rs1_ << 15) | (f3 << 12) | (rd_ << 7) | opcode


def enc_i(opcode: int, rd_: int, f3: int, rs1_: int, imm: int) -> int:
    return ((imm & 0xFFF) << 20) | (rs1_ << 15) | (f3 << 12) | (rd_ << 7) | opcode


def enc_s(opcode: int, f3: int, rs1_: int, rs2_: int, imm: int) -> int:
    imm &= 0xFFF
    return (
        ((imm >> 5) << 25) | (rs2_ << 20) | (rs1_ << 15) | (f3 << 12) | ((imm & 31) << 7) | opcode
    )


def enc_b(opcode: int, f3: int, rs1_: int, rs2_: int, imm: int) -> int:
    imm &= 0x1FFF
    return (
        ((imm >> 12) << 31)
        | (((imm >> 5) & 0x3F) << 25)
        | (rs2_ << 20)
        | (rs1_ << 15)
        | (f3 << 12)
        | (((imm >> 1) & 0xF) << 8)
        | (((imm >> 11) & 1) << 7)
        | opcode
    )


def enc_u(opcode: int, rd_: int, imm: int) -> int:
    return (imm & 0xFFFF_F000) | (rd_ << 7) | opcode


def enc_j(opcode: int, rd_: int, imm: int) -> int:
    imm &= 0x1F_FFFF
    return (
        ((imm >> 20) << 31)
        | (((imm >> 1) & 0x3FF) << 21)
        | (((imm >> 11) & 1) << 20)
        | (((imm >> 12) & 0xFF) << 12)
        | (rd_ << 7)
        | opcode
    )


OP_LOAD, OP_MISC_MEM, OP_IMM, OP_AUIPC, OP_STORE = 0x03, 0x0F, 0x13, 0x17, 0x23
OP_AMO, OP_OP, OP_LUI, OP_BRANCH, OP_JALR, OP_JAL, OP_SYSTEM = (
    0x2F, 0x33, 0x37, 0x63, 0x67, 0x6F, 0x73,
)
EBREAK = 0x0010_0073
ILLEGAL = 0  # what expand_compressed returns for a reserved/illegal encoding


# --- RVC expansion --------------------------------------------------------------


def _bit(h: int, n: int) -> int:
    return (h >> n) & 1


def _bits(h: int, hi: int, lo: int) -> int:
    return (h >> lo) & ((1 << (hi - lo + 1)) - 1)


def _cj_imm(h: int) -> int:
    return sext(
        (_bit(h, 12) << 11)
        | (_bit(h, 11) << 4)
        | (_bits(h, 10, 9) << 8)
        | (_bit(h, 8) << 10)
        | (_bit(h, 7) << 6)
        | (_bit(h, 6) << 7)
        | (_bits(h, 5, 3) << 1)
        | (_bit(h, 2) << 5),
        12,
    )


def _cb_imm(h: int) -> int:
    return sext(
        (_bit(h, 12) << 8)
        | (_bits(h, 11, 10) << 3)
        | (_bits(h, 6, 5) << 6)
        | (_bits(h, 4, 3) << 1)
        | (_bit(h, 2) << 5),
        9,
    )


def _ci_imm(h: int) -> int:
    return sext((_bit(h, 12) << 5) | _bits(h, 6, 2), 6)


@functools.cache  # a pure function of 65536 inputs, asked again at each (re)decode
def expand_compressed(h: int) -> int:
    """The 32-bit instruction a 16-bit RVC instruction stands for (RV32), or ILLEGAL."""
    quadrant, f3 = h & 3, _bits(h, 15, 13)
    rd_full, rs2_full = _bits(h, 11, 7), _bits(h, 6, 2)
    rdp, rs1p = 8 + _bits(h, 4, 2), 8 + _bits(h, 9, 7)  # the x8..x15 register forms
    if quadrant == 0:
        mem_off = (_bits(h, 12, 10) << 3) | (_bit(h, 6) << 2) | (_bit(h, 5) << 6)
        if f3 == 0:  # C.ADDI4SPN
            nzuimm = (
                (_bits(h, 12, 11) << 4) | (_bits(h, 10, 7) << 6) | (_bit(h, 6) << 2)
                | (_bit(h, 5) << 3)
            )
            return enc_i(OP_IMM, rdp, 0, 2, nzuimm) if nzuimm else ILLEGAL
        if f3 == 2:  # C.LW
            return enc_i(OP_LOAD, rdp, 2, rs1p, mem_off)
        if f3 == 6:  # C.SW
            return enc_s(OP_STORE, 2, rs1p, rdp, mem_off)
        return ILLEGAL  # FP loads/stores and the reserved slot
    if quadrant == 1:
        if f3 == 0:  # C.ADDI / C.NOP
            return enc_i(OP_IMM, rd_full, 0, rd_full, _ci_imm(h))
        if f3 == 1:  # C.JAL
            return enc_j(OP_JAL, 1, _cj_imm(h))
        if f3 == 2:  # C.LI
            return enc_i(OP_IMM, rd_full, 0, 0, _ci_imm(h))
        if f3 == 3:
            if rd_full == 2:  # C.ADDI16SP
                imm = sext(
                    (_bit(h, 12) << 9) | (_bit(h, 6) << 4) | (_bit(h, 5) << 6)
                    | (_bits(h, 4, 3) << 7) | (_bit(h, 2) << 5),
                    10,
                )
                return enc_i(OP_IMM, 2, 0, 2, imm) if imm else ILLEGAL
            imm = _ci_imm(h)  # C.LUI
            return enc_u(OP_LUI, rd_full, imm << 12) if imm else ILLEGAL
        if f3 == 4:
            op2 = _bits(h, 11, 10)
            if op2 in (0, 1):  # C.SRLI / C.SRAI; shamt[5] must be 0 on RV32
                if _bit(h, 12):
                    return ILLEGAL
                return enc_i(OP_IMM, rs1p, 5, rs1p, rs2_full | (op2 << 10))
            if op2 == 2:  # C.ANDI
                return enc_i(OP_IMM, rs1p, 7, rs1p, _ci_imm(h))
            if _bit(h, 12):  # C.SUBW / C.ADDW are RV64 only
                return ILLEGAL
            f3_op, f7_op = ((0, 0x20), (4, 0), (6, 0), (7, 0))[_bits(h, 6, 5)]
            return enc_r(OP_OP, rs1p, f3_op, rs1p, rdp, f7_op)
        if f3 == 5:  # C.J
            return enc_j(OP_JAL, 0, _cj_imm(h))
        # C.BEQZ / C.BNEZ
        return enc_b(OP_BRANCH, 0 if f3 == 6 else 1, rs1p, 0, _cb_imm(h))
    if quadrant == 2:
        if f3 == 0:  # C.SLLI
            return ILLEGAL if _bit(h, 12) else enc_i(OP_IMM, rd_full, 1, rd_full, rs2_full)
        if f3 == 2:  # C.LWSP
            off = (_bit(h, 12) << 5) | (_bits(h, 6, 4) << 2) | (_bits(h, 3, 2) << 6)
            return enc_i(OP_LOAD, rd_full, 2, 2, off) if rd_full else ILLEGAL
        if f3 == 4:
            if not _bit(h, 12):
                if rs2_full == 0:  # C.JR
                    return enc_i(OP_JALR, 0, 0, rd_full, 0) if rd_full else ILLEGAL
                return enc_r(OP_OP, rd_full, 0, 0, rs2_full, 0)  # C.MV
            if rs2_full == 0:
                if rd_full == 0:
                    return EBREAK  # C.EBREAK
                return enc_i(OP_JALR, 1, 0, rd_full, 0)  # C.JALR
            return enc_r(OP_OP, rd_full, 0, rd_full, rs2_full, 0)  # C.ADD
        if f3 == 6:  # C.SWSP
            off = (_bits(h, 12, 9) << 2) | (_bits(h, 8, 7) << 6)
            return enc_s(OP_STORE, 2, 2, rs2_full, off)
        return ILLEGAL  # FP slots
    return ILLEGAL  # quadrant 3 is a 32-bit instruction, not RVC
