"""Machine-mode CSR numbers, status bits and trap causes (privileged spec names)."""

from __future__ import annotations

from enum import IntEnum


class Csr(IntEnum):
    MSTATUS = 0x300
    MISA = 0x301
    MIE = 0x304
    MTVEC = 0x305
    MSTATUSH = 0x310
    MCOUNTINHIBIT = 0x320
    MSCRATCH = 0x340
    MEPC = 0x341
    MCAUSE = 0x342
    MTVAL = 0x343
    MIP = 0x344
    MCYCLE = 0xB00
    MINSTRET = 0xB02
    MCYCLEH = 0xB80
    MINSTRETH = 0xB82
    CYCLE = 0xC00
    TIME = 0xC01
    INSTRET = 0xC02
    CYCLEH = 0xC80
    TIMEH = 0xC81
    INSTRETH = 0xC82
    MVENDORID = 0xF11
    MARCHID = 0xF12
    MIMPID = 0xF13
    MHARTID = 0xF14


# Privilege levels (the encoding of mstatus.MPP and of gdb's $priv)
PRV_U, PRV_M = 0, 3

# mstatus
MSTATUS_MIE = 1 << 3
MSTATUS_MPIE = 1 << 7
MSTATUS_MPP = 3 << 11  # always M: the only privilege level we have
MSTATUS_WRITABLE = MSTATUS_MIE | MSTATUS_MPIE

# mie / mip
MSI, MTI, MEI = 3, 7, 11
MIP_MSIP, MIP_MTIP, MIP_MEIP = 1 << MSI, 1 << MTI, 1 << MEI
MIE_WRITABLE = MIP_MSIP | MIP_MTIP | MIP_MEIP
IRQ_PRIORITY = (MEI, MSI, MTI)  # the privileged spec's order for M-level interrupts

# misa: MXL=1 (32-bit), extensions A, C, I, M
MISA_VALUE = (1 << 30) | (1 << 0) | (1 << 2) | (1 << 8) | (1 << 12)

INTERRUPT_BIT = 1 << 31


class Cause(IntEnum):
    INSN_MISALIGNED = 0
    INSN_ACCESS = 1
    ILLEGAL_INSN = 2
    BREAKPOINT = 3
    LOAD_MISALIGNED = 4
    LOAD_ACCESS = 5
    STORE_MISALIGNED = 6
    STORE_ACCESS = 7
    ECALL_M = 11


def is_read_only(csr: int) -> bool:
    return (csr >> 10) == 3
