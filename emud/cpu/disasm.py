"""RV32IMAC + Zicsr + Zifencei disassembler producing GNU objdump-style text.

Pure functions, no state: ``disassemble(insn, pc)`` returns what
``riscv64-unknown-elf-objdump -d`` prints for the same bits, e.g.
``addi a0,a0,1``, ``lw a5,12(sp)``, ``beq a0,a1,0x80000010``.

Like objdump (without ``-M no-aliases``) it prefers the common
pseudo-instructions (``li``, ``mv``, ``nop``, ``ret``, ``j``, ``jr``,
``csrr``, ``csrw`` ...) and prints compressed instructions as their base
equivalent (``c.addi a0,1`` -> ``addi a0,a0,1``).  RVC HINT encodings that
have no base equivalent keep objdump's ``c.`` spelling (``c.nop 1``,
``c.li zero,5``, ``c.slli64 a0``).  Branch and jump targets are absolute
(``pc`` + offset) in hex; objdump's trailing ``<symbol>`` and ``# comment``
annotations are not produced.  Anything else is ``.2byte 0x...`` or
``.4byte 0x...`` (unpadded hex), as objdump prints it.

Deliberate difference: binutils 2.40 prints some immediate instructions under the
register-form name (``add a0,a0,1``, ``sll``, ``csrw mstatus,8``); this module
prints the real names (``addi``, ``slli``, ``csrwi``), as later binutils do.
Like objdump, encodings that are reserved only on RV32 (``slli``/``c.slli`` with
shamt >= 32, ``c.addi16sp`` with a zero immediate) are shown decoded.

A 16-bit instruction may be passed with junk in bits 31:16 (a fetched word).
Both tables are first-match-wins lists of ``(mask, match, mnemonic, operands)``
(the RVC table adds an operand-kind column), aliases before the instruction they
specialise, like binutils' riscv-opc.c.
Operand letters: ``d`` rd, ``s`` rs1, ``t`` rs2, ``j`` signed immediate,
``x`` hex immediate (shift amounts, ``lui``/``auipc``), ``b`` branch/jump
target, ``c`` CSR, ``z`` 5-bit CSR immediate, ``P``/``Q`` fence sets; any other
character is copied.
"""

from __future__ import annotations

from typing import NamedTuple

# --- names -----------------------------------------------------------------------

ABI_NAMES = (
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2",
    "s0", "s1", "a0", "a1", "a2", "a3", "a4", "a5",
    "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7",
    "s8", "s9", "s10", "s11", "t3", "t4", "t5", "t6",
)  # fmt: skip

CSR_NAMES: dict[int, str] = {
    0x300: "mstatus", 0x301: "misa", 0x304: "mie", 0x305: "mtvec", 0x306: "mcounteren",
    0x320: "mcountinhibit",
    **{0x3A0 + i: f"pmpcfg{i}" for i in range(4)},
    **{0x3B0 + i: f"pmpaddr{i}" for i in range(16)},
    0x340: "mscratch", 0x341: "mepc", 0x342: "mcause", 0x343: "mtval", 0x344: "mip",
    0xB00: "mcycle", 0xB02: "minstret", 0xB80: "mcycleh", 0xB82: "minstreth",
    0xC00: "cycle", 0xC01: "time", 0xC02: "instret",
    0xC80: "cycleh", 0xC81: "timeh", 0xC82: "instreth",
    0xF11: "mvendorid", 0xF12: "marchid", 0xF13: "mimpid", 0xF14: "mhartid",
}  # fmt: skip

FENCE_SETS = (
    "unknown", "w", "r", "rw", "o", "ow", "or", "orw",
    "i", "iw", "ir", "irw", "io", "iow", "ior", "iorw",
)  # fmt: skip

AQRL_SUFFIX = ("", ".rl", ".aq", ".aqrl")  # indexed by insn[26:25]

# --- 32-bit encodings -----------------------------------------------------------

OPC, F3, F7 = 0x7F, 0x7000, 0xFE00_0000
RD, RS1, RS2, IMM12 = 0xF80, 0xF_8000, 0x1F0_0000, 0xFFF0_0000
R_TYPE, I_TYPE = OPC | F3 | F7, OPC | F3
FULL = 0xFFFF_FFFF
OP_AMO = 0x2F

Entry = tuple[int, int, str, str]  # mask, match, mnemonic, operands

OPCODES_32: tuple[Entry, ...] = (
    # system
    (FULL, 0xC000_1073, "unimp", ""),  # csrw cycle,zero
    (FULL, 0x0000_0073, "ecall", ""),
    (FULL, 0x0010_0073, "ebreak", ""),
    (FULL, 0x3020_0073, "mret", ""),
    (FULL, 0x1050_0073, "wfi", ""),
    (FULL & ~RD, 0xC000_2073, "rdcycle", "d"),
    (FULL & ~RD, 0xC010_2073, "rdtime", "d"),
    (FULL & ~RD, 0xC020_2073, "rdinstret", "d"),
    (FULL & ~RD, 0xC800_2073, "rdcycleh", "d"),
    (FULL & ~RD, 0xC810_2073, "rdtimeh", "d"),
    (FULL & ~RD, 0xC820_2073, "rdinstreth", "d"),
    (I_TYPE | RS1, 0x2073, "csrr", "d,c"),
    (I_TYPE | RD, 0x1073, "csrw", "c,s"),
    (I_TYPE | RD, 0x2073, "csrs", "c,s"),
    (I_TYPE | RD, 0x3073, "csrc", "c,s"),
    (I_TYPE | RD, 0x5073, "csrwi", "c,z"),
    (I_TYPE | RD, 0x6073, "csrsi", "c,z"),
    (I_TYPE | RD, 0x7073, "csrci", "c,z"),
    (I_TYPE, 0x1073, "csrrw", "d,c,s"),
    (I_TYPE, 0x2073, "csrrs", "d,c,s"),
    (I_TYPE, 0x3073, "csrrc", "d,c,s"),
    (I_TYPE, 0x5073, "csrrwi", "d,c,z"),
    (I_TYPE, 0x6073, "csrrsi", "d,c,z"),
    (I_TYPE, 0x7073, "csrrci", "d,c,z"),
    # fences
    (FULL, 0x0FF0_000F, "fence", ""),
    (FULL, 0x8330_000F, "fence.tso", ""),
    (0xF00F_FFFF, 0x0000_000F, "fence", "P,Q"),
    (FULL, 0x0000_100F, "fence.i", ""),
    # jumps
    (FULL, 0x0000_8067, "ret", ""),
    (I_TYPE | RD | IMM12, 0x0067, "jr", "s"),
    (I_TYPE | RD, 0x0067, "jr", "j(s)"),
    (I_TYPE | RD | IMM12, 0x00E7, "jalr", "s"),
    (I_TYPE | RD, 0x00E7, "jalr", "j(s)"),
    (I_TYPE | IMM12, 0x0067, "jalr", "d,s"),
    (I_TYPE, 0x0067, "jalr", "d,j(s)"),
    (OPC | RD, 0x006F, "j", "b"),
    (OPC | RD, 0x00EF, "jal", "b"),
    (OPC, 0x006F, "jal", "d,b"),
    # branches
    (I_TYPE | RS2, 0x0063, "beqz", "s,b"),
    (I_TYPE, 0x0063, "beq", "s,t,b"),
    (I_TYPE | RS1, 0x5063, "blez", "t,b"),
    (I_TYPE | RS2, 0x5063, "bgez", "s,b"),
    (I_TYPE, 0x5063, "bge", "s,t,b"),
    (I_TYPE, 0x7063, "bgeu", "s,t,b"),
    (I_TYPE | RS2, 0x4063, "bltz", "s,b"),
    (I_TYPE | RS1, 0x4063, "bgtz", "t,b"),
    (I_TYPE, 0x4063, "blt", "s,t,b"),
    (I_TYPE, 0x6063, "bltu", "s,t,b"),
    (I_TYPE | RS2, 0x1063, "bnez", "s,b"),
    (I_TYPE, 0x1063, "bne", "s,t,b"),
    # upper immediates, loads, stores
    (OPC, 0x37, "lui", "d,x"),
    (OPC, 0x17, "auipc", "d,x"),
    (I_TYPE, 0x0003, "lb", "d,j(s)"),
    (I_TYPE, 0x1003, "lh", "d,j(s)"),
    (I_TYPE, 0x2003, "lw", "d,j(s)"),
    (I_TYPE, 0x4003, "lbu", "d,j(s)"),
    (I_TYPE, 0x5003, "lhu", "d,j(s)"),
    (I_TYPE, 0x0023, "sb", "t,j(s)"),
    (I_TYPE, 0x1023, "sh", "t,j(s)"),
    (I_TYPE, 0x2023, "sw", "t,j(s)"),
    # register-immediate
    (FULL, 0x0000_0013, "nop", ""),
    (I_TYPE | RS1, 0x0013, "li", "d,j"),
    (I_TYPE | IMM12, 0x0013, "mv", "d,s"),
    (I_TYPE, 0x0013, "addi", "d,s,j"),
    (I_TYPE, 0x2013, "slti", "d,s,j"),
    (I_TYPE | IMM12, 0x0010_3013, "seqz", "d,s"),
    (I_TYPE, 0x3013, "sltiu", "d,s,j"),
    (I_TYPE | IMM12, 0xFFF0_4013, "not", "d,s"),
    (I_TYPE, 0x4013, "xori", "d,s,j"),
    (I_TYPE, 0x6013, "ori", "d,s,j"),
    (I_TYPE | IMM12, 0x0FF0_7013, "zext.b", "d,s"),
    (I_TYPE, 0x7013, "andi", "d,s,j"),
    (0xFC00_707F, 0x0000_1013, "slli", "d,s,x"),  # objdump accepts RV64's 6-bit shamt
    (0xFC00_707F, 0x0000_5013, "srli", "d,s,x"),
    (0xFC00_707F, 0x4000_5013, "srai", "d,s,x"),
    # register-register
    (R_TYPE, 0x0000_0033, "add", "d,s,t"),
    (R_TYPE | RS1, 0x4000_0033, "neg", "d,t"),
    (R_TYPE, 0x4000_0033, "sub", "d,s,t"),
    (R_TYPE, 0x0000_1033, "sll", "d,s,t"),
    (R_TYPE | RS2, 0x0000_2033, "sltz", "d,s"),
    (R_TYPE | RS1, 0x0000_2033, "sgtz", "d,t"),
    (R_TYPE, 0x0000_2033, "slt", "d,s,t"),
    (R_TYPE | RS1, 0x0000_3033, "snez", "d,t"),
    (R_TYPE, 0x0000_3033, "sltu", "d,s,t"),
    (R_TYPE, 0x0000_4033, "xor", "d,s,t"),
    (R_TYPE, 0x0000_5033, "srl", "d,s,t"),
    (R_TYPE, 0x4000_5033, "sra", "d,s,t"),
    (R_TYPE, 0x0000_6033, "or", "d,s,t"),
    (R_TYPE, 0x0000_7033, "and", "d,s,t"),
    # M
    (R_TYPE, 0x0200_0033, "mul", "d,s,t"),
    (R_TYPE, 0x0200_1033, "mulh", "d,s,t"),
    (R_TYPE, 0x0200_2033, "mulhsu", "d,s,t"),
    (R_TYPE, 0x0200_3033, "mulhu", "d,s,t"),
    (R_TYPE, 0x0200_4033, "div", "d,s,t"),
    (R_TYPE, 0x0200_5033, "divu", "d,s,t"),
    (R_TYPE, 0x0200_6033, "rem", "d,s,t"),
    (R_TYPE, 0x0200_7033, "remu", "d,s,t"),
    # A (the .aq/.rl suffix is appended from insn[26:25])
    (0xF9F0_707F, 0x1000_202F, "lr.w", "d,(s)"),
    (0xF800_707F, 0x1800_202F, "sc.w", "d,t,(s)"),
    (0xF800_707F, 0x0800_202F, "amoswap.w", "d,t,(s)"),
    (0xF800_707F, 0x0000_202F, "amoadd.w", "d,t,(s)"),
    (0xF800_707F, 0x2000_202F, "amoxor.w", "d,t,(s)"),
    (0xF800_707F, 0x6000_202F, "amoand.w", "d,t,(s)"),
    (0xF800_707F, 0x4000_202F, "amoor.w", "d,t,(s)"),
    (0xF800_707F, 0x8000_202F, "amomin.w", "d,t,(s)"),
    (0xF800_707F, 0xA000_202F, "amomax.w", "d,t,(s)"),
    (0xF800_707F, 0xC000_202F, "amominu.w", "d,t,(s)"),
    (0xF800_707F, 0xE000_202F, "amomaxu.w", "d,t,(s)"),
)

# --- 16-bit (RVC) encodings -----------------------------------------------------
# The operand kind (last column) says where rd/rs1/rs2/imm come from; a mnemonic of
# "" marks a reserved encoding.  Masks cover the register/immediate fields where an
# alias or a reserved case needs them to be zero.

C_IMM6, C_RD = 0x107C, 0x0F80  # the CI immediate and rd/rs1 fields
C_OP = 0xE003  # funct3 + quadrant

CEntry = tuple[int, int, str, str, str]  # mask, match, mnemonic, operands, kind

OPCODES_16: tuple[CEntry, ...] = (
    # quadrant 0
    (0xFFFF, 0x0000, "unimp", "", "CR"),
    (C_OP | 0x1FE0, 0x0000, "", "", "CR"),  # c.addi4spn with nzuimm == 0
    (C_OP, 0x0000, "addi", "d,s,j", "CIW"),
    (C_OP, 0x4000, "lw", "d,j(s)", "CL"),
    (C_OP, 0xC000, "sw", "t,j(s)", "CL"),
    # quadrant 1
    (0xFFFF, 0x0001, "nop", "", "CR"),
    (C_OP | C_RD, 0x0001, "c.nop", "j", "CI"),
    (C_OP, 0x0001, "addi", "d,d,j", "CI"),
    (C_OP, 0x2001, "jal", "b", "CJ"),
    (C_OP | C_RD, 0x4001, "c.li", "d,j", "CI"),
    (C_OP, 0x4001, "li", "d,j", "CI"),
    (C_OP | C_RD, 0x6101, "addi", "d,d,j", "C16SP"),
    (C_OP | C_IMM6, 0x6001, "", "", "CR"),  # c.lui with imm == 0
    (C_OP | C_RD, 0x6001, "c.lui", "d,x", "CLUI"),
    (C_OP, 0x6001, "lui", "d,x", "CLUI"),
    (0xFC7F, 0x8001, "c.srli64", "d", "CB"),
    (0xEC03, 0x8001, "srli", "d,d,x", "CBSH"),
    (0xFC7F, 0x8401, "c.srai64", "d", "CB"),
    (0xEC03, 0x8401, "srai", "d,d,x", "CBSH"),
    (0xEC03, 0x8801, "andi", "d,d,j", "CBI"),
    (0xFC63, 0x8C01, "sub", "d,d,t", "CA"),
    (0xFC63, 0x8C21, "xor", "d,d,t", "CA"),
    (0xFC63, 0x8C41, "or", "d,d,t", "CA"),
    (0xFC63, 0x8C61, "and", "d,d,t", "CA"),
    (C_OP, 0xA001, "j", "b", "CJ"),
    (C_OP, 0xC001, "beqz", "s,b", "CB"),
    (C_OP, 0xE001, "bnez", "s,b", "CB"),
    # quadrant 2
    (C_OP | C_IMM6, 0x0002, "c.slli64", "d", "CR"),
    (C_OP | C_RD, 0x0002, "c.slli", "d,x", "CSH"),
    (C_OP, 0x0002, "slli", "d,d,x", "CSH"),
    (C_OP | C_RD, 0x4002, "", "", "CR"),  # c.lwsp with rd == 0
    (C_OP, 0x4002, "lw", "d,j(s)", "CLWSP"),
    (0xFFFF, 0x8002, "", "", "CR"),  # c.jr with rs1 == 0
    (0xFFFF, 0x8082, "ret", "", "CR"),
    (0xF07F, 0x8002, "jr", "d", "CR"),
    (0xFF83, 0x8002, "c.mv", "d,t", "CR"),
    (0xF003, 0x8002, "mv", "d,t", "CR"),
    (0xFFFF, 0x9002, "ebreak", "", "CR"),
    (0xF07F, 0x9002, "jalr", "d", "CR"),
    (0xFF83, 0x9002, "c.add", "d,t", "CR"),
    (0xF003, 0x9002, "add", "d,d,t", "CR"),
    (C_OP, 0xC002, "sw", "t,j(s)", "CSWSP"),
)

# --- immediate layouts: (hi, lo, dest) moves insn[hi:lo] to imm[dest + ...] -----------

Layout = tuple[tuple[int, int, int], ...]

S_IMM: Layout = ((31, 25, 5), (11, 7, 0))
B_IMM: Layout = ((31, 31, 12), (7, 7, 11), (30, 25, 5), (11, 8, 1))
J_IMM: Layout = ((31, 31, 20), (19, 12, 12), (20, 20, 11), (30, 21, 1))
CI_IMM_BITS: Layout = ((12, 12, 5), (6, 2, 0))
CIW_IMM: Layout = ((12, 11, 4), (10, 7, 6), (6, 6, 2), (5, 5, 3))
CL_IMM: Layout = ((12, 10, 3), (6, 6, 2), (5, 5, 6))
C16SP_IMM: Layout = ((12, 12, 9), (6, 6, 4), (5, 5, 6), (4, 3, 7), (2, 2, 5))
CJ_IMM: Layout = (
    (12, 12, 11), (11, 11, 4), (10, 9, 8), (8, 8, 10), (7, 7, 6), (6, 6, 7), (5, 3, 1), (2, 2, 5),
)  # fmt: skip
CB_IMM: Layout = ((12, 12, 8), (11, 10, 3), (6, 5, 6), (4, 3, 1), (2, 2, 5))
CLWSP_IMM: Layout = ((12, 12, 5), (6, 4, 2), (3, 2, 6))
CSWSP_IMM: Layout = ((12, 9, 2), (8, 7, 6))

# --- decode helpers ---------------------------------------------------------------


class Operands(NamedTuple):
    rd: int = 0
    rs1: int = 0
    rs2: int = 0
    imm: int = 0


def insn_length(first_halfword: int) -> int:
    """Length in bytes of the instruction whose first halfword is given."""
    return 4 if first_halfword & 3 == 3 else 2


def _sext(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value & (sign - 1)) - (value & sign)


def _bits(value: int, hi: int, lo: int) -> int:
    return (value >> lo) & ((1 << (hi - lo + 1)) - 1)


def _gather(value: int, layout: Layout) -> int:
    """Assemble an immediate from the bit fields named by `layout`."""
    out = 0
    for hi, lo, dest in layout:
        out |= _bits(value, hi, lo) << dest
    return out


def _imm32(insn: int) -> int:
    """The immediate of a 32-bit instruction, in the form its operands print it."""
    opcode = insn & OPC
    if opcode in (0x37, 0x17):  # U: the 20-bit field itself
        return insn >> 12
    if opcode == 0x23:  # S
        return _sext(_gather(insn, S_IMM), 12)
    if opcode == 0x63:  # B
        return _sext(_gather(insn, B_IMM), 13)
    if opcode == 0x6F:  # J
        return _sext(_gather(insn, J_IMM), 21)
    if opcode in (0x73, 0x0F):  # CSR number / fence bits: unsigned
        return insn >> 20
    if opcode == 0x13 and (insn >> 12) & 7 in (1, 5):  # shift amount
        return (insn >> 20) & 0x3F
    return _sext(insn >> 20, 12)  # I


def _operands16(h: int, kind: str) -> Operands:
    """rd/rs1/rs2/imm of a compressed instruction, by operand kind."""
    rd, rs2 = _bits(h, 11, 7), _bits(h, 6, 2)
    rdp, rs1p = 8 + _bits(h, 4, 2), 8 + _bits(h, 9, 7)  # the x8..x15 forms
    shamt = _gather(h, CI_IMM_BITS)
    ci = _sext(shamt, 6)
    if kind == "CIW":
        return Operands(rdp, 2, 0, _gather(h, CIW_IMM))
    if kind == "CL":
        return Operands(rdp, rs1p, rdp, _gather(h, CL_IMM))
    if kind == "CI":
        return Operands(rd, rd, 0, ci)
    if kind == "C16SP":
        return Operands(2, 2, 0, _sext(_gather(h, C16SP_IMM), 10))
    if kind == "CLUI":
        return Operands(rd, 0, 0, ci & 0xFFFFF)
    if kind == "CSH":
        return Operands(rd, rd, 0, shamt)
    if kind == "CBSH":
        return Operands(rs1p, rs1p, 0, shamt)
    if kind == "CBI":
        return Operands(rs1p, rs1p, 0, ci)
    if kind == "CA":
        return Operands(rs1p, rs1p, rdp)
    if kind == "CJ":
        return Operands(imm=_sext(_gather(h, CJ_IMM), 12))
    if kind == "CB":
        return Operands(rs1p, rs1p, 0, _sext(_gather(h, CB_IMM), 9))
    if kind == "CLWSP":
        return Operands(rd, 2, 0, _gather(h, CLWSP_IMM))
    if kind == "CSWSP":
        return Operands(0, 2, rs2, _gather(h, CSWSP_IMM))
    return Operands(rd, rd, rs2)  # CR


def _lookup32(insn: int) -> Entry | None:
    for entry in OPCODES_32:
        if insn & entry[0] == entry[1]:
            return entry
    return None


def _lookup16(h: int) -> CEntry | None:
    for entry in OPCODES_16:
        if h & entry[0] == entry[1]:
            return entry if entry[2] else None
    return None


# --- formatter ------------------------------------------------------------------------


def csr_name(csr: int) -> str:
    """objdump's spelling of a CSR number: its name if known, else hex."""
    return CSR_NAMES.get(csr, f"0x{csr:x}")


def _format(mnemonic: str, operands: str, ops: Operands, pc: int) -> str:
    out: list[str] = []
    for ch in operands:
        if ch == "d":
            out.append(ABI_NAMES[ops.rd])
        elif ch == "s":
            out.append(ABI_NAMES[ops.rs1])
        elif ch == "t":
            out.append(ABI_NAMES[ops.rs2])
        elif ch == "j":
            out.append(str(ops.imm))
        elif ch == "x":
            out.append(f"0x{ops.imm:x}")
        elif ch == "b":
            out.append(f"0x{(pc + ops.imm) & 0xFFFF_FFFF:x}")
        elif ch == "c":
            out.append(csr_name(ops.imm & 0xFFF))
        elif ch == "z":
            out.append(str(ops.rs1))
        elif ch == "P":
            out.append(FENCE_SETS[(ops.imm >> 4) & 15])
        elif ch == "Q":
            out.append(FENCE_SETS[ops.imm & 15])
        else:
            out.append(ch)
    return f"{mnemonic} {''.join(out)}" if operands else mnemonic


def disassemble(insn: int, pc: int = 0) -> str:
    """objdump-style text for one instruction (16-bit if insn[1:0] != 0b11, else 32-bit)."""
    pc &= 0xFFFF_FFFF
    if insn_length(insn) == 2:
        h = insn & 0xFFFF
        centry = _lookup16(h)
        if centry is None:
            return f".2byte 0x{h:x}"
        _, _, mnemonic, operands, kind = centry
        return _format(mnemonic, operands, _operands16(h, kind), pc)
    insn &= 0xFFFF_FFFF
    entry = _lookup32(insn)
    if entry is None:
        return f".4byte 0x{insn:x}"
    _, _, mnemonic, operands = entry
    if insn & OPC == OP_AMO:
        mnemonic += AQRL_SUFFIX[(insn >> 25) & 3]
    ops = Operands(_bits(insn, 11, 7), _bits(insn, 19, 15), _bits(insn, 24, 20), _imm32(insn))
    return _format(mnemonic, operands, ops, pc)
