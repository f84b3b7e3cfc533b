"""CSR numbers, status bits and trap causes for M + U (privileged spec names)."""

from __future__ import annotations

from enum import IntEnum


class Csr(IntEnum):
    MSTATUS = 0x300
    MISA = 0x301
    MIE = 0x304
    MTVEC = 0x305
    MCOUNTEREN = 0x306
    MSTATUSH = 0x310
    MCOUNTINHIBIT = 0x320
    MSCRATCH = 0x340
    MEPC = 0x341
    MCAUSE = 0x342
    MTVAL = 0x343
    MIP = 0x344
    PMPCFG0 = 0x3A0
    PMPCFG1 = 0x3A1
    PMPCFG2 = 0x3A2
    PMPCFG3 = 0x3A3
    PMPADDR0 = 0x3B0
    PMPADDR1 = 0x3B1
    PMPADDR2 = 0x3B2
    PMPADDR3 = 0x3B3
    PMPADDR4 = 0x3B4
    PMPADDR5 = 0x3B5
    PMPADDR6 = 0x3B6
    PMPADDR7 = 0x3B7
    PMPADDR8 = 0x3B8
    PMPADDR9 = 0x3B9
    PMPADDR10 = 0x3BA
    PMPADDR11 = 0x3BB
    PMPADDR12 = 0x3BC
    PMPADDR13 = 0x3BD
    PMPADDR14 = 0x3BE
    PMPADDR15 = 0x3BF
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

# mstatus (with no S-mode, its S fields are read-only zero)
MSTATUS_MIE = 1 << 3
MSTATUS_MPIE = 1 << 7
MPP_SHIFT = 11
MSTATUS_MPP = 3 << MPP_SHIFT
MSTATUS_MPRV = 1 << 17
MSTATUS_TW = 1 << 21
MSTATUS_WRITABLE = MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP | MSTATUS_MPRV | MSTATUS_TW

# mie / mip
MSI, MTI, MEI = 3, 7, 11
MIP_MSIP, MIP_MTIP, MIP_MEIP = 1 << MSI, 1 << MTI, 1 << MEI
MIE_WRITABLE = MIP_MSIP | MIP_MTIP | MIP_MEIP
IRQ_PRIORITY = (MEI, MSI, MTI)  # the privileged spec's order for M-level interrupts

# misa: MXL=1 (32-bit), extensions A, C, I, M and U (user mode)
MISA_VALUE = (1 << 30) | (1 << 0) | (1 << 2) | (1 << 8) | (1 << 12) | (1 << 20)

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
    ECALL_U = 8
    ECALL_M = 11


def is_read_only(csr: int) -> bool:
    return (csr >> 10) == 3


def lowest_privilege(csr: int) -> int:
    """The least privileged level that may access a CSR (its bits 9..8)."""
    return csr >> 8 & 3


def is_hpm(csr: int) -> bool:
    """The hardware performance monitor CSRs (counters 3..31 and their events), which
    exist and read as zero: no event is counted."""
    return (csr & 0x1F) >= 3 and (csr & ~0x1F) in (0xB00, 0xB80, 0x320, 0xC00, 0xC80)


def counter_bit(csr: int) -> int | None:
    """The mcounteren bit that lets U-mode read a user counter CSR, None for others."""
    if 0xC00 <= csr <= 0xC1F or 0xC80 <= csr <= 0xC9F:
        return csr & 0x1F
    return None


# Writes that touch only the hart's own registers (or its counters, whose icount the
# hart knows exactly inside a batch): they run inline, without a clock sync, and the
# batch goes on after them.  Writes to mstatus and mie may make an interrupt deliverable
# or switch the predecoded code (MPRV), PMP and trigger writes rebuild code: those end
# the batch through NeedsSync, as do writes to read-only or unknown CSRs (they trap).
PLAIN_WRITES = frozenset({
    Csr.MTVEC, Csr.MCOUNTEREN, Csr.MSCRATCH, Csr.MEPC, Csr.MCAUSE, Csr.MTVAL,
    Csr.MISA, Csr.MIP, Csr.MSTATUSH, Csr.MCOUNTINHIBIT,
    Csr.MCYCLE, Csr.MCYCLEH, Csr.MINSTRET, Csr.MINSTRETH,
})


def needs_sync(csr: int, writes: bool) -> bool:
    """Whether a CSR access must run with the clock exact (NeedsSync): a read of `time`
    (its source reads the virtual clock), or a write with effects beyond the hart's own
    registers.  Every other read sees state that does not change inside a batch (mip
    changes only when a device is accessed or a timer fires, which ends a batch)."""
    if csr in (Csr.TIME, Csr.TIMEH):
        return True
    return writes and csr not in PLAIN_WRITES and not is_hpm(csr)
