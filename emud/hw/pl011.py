"""ARM PL011 UART, following QEMU's current model (spec/pl011.md).

Characters are instantaneous: there is no TX FIFO and no baud timing.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from emud.device import Device
from emud.irq import IRQ

# --- register map -----------------------------------------------------------------


class Reg(IntEnum):
    DR = 0x000
    RSR = 0x004  # RSR on read, ECR on write
    FR = 0x018
    ILPR = 0x020
    IBRD = 0x024
    FBRD = 0x028
    LCR_H = 0x02C
    CR = 0x030
    IFLS = 0x034
    IMSC = 0x038
    RIS = 0x03C
    MIS = 0x040
    ICR = 0x044
    DMACR = 0x048


ID_BASE = 0xFE0
ARM_ID = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

# FR bits
FR_CTS, FR_DSR, FR_DCD, FR_BUSY = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE, FR_RI = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
# LCR_H bits
LCR_BRK, LCR_FEN = 1 << 0, 1 << 4
# CR bits
CR_LBE, CR_DTR, CR_RTS, CR_OUT1, CR_OUT2 = 1 << 7, 1 << 10, 1 << 11, 1 << 12, 1 << 13
# interrupt bits (RIS/MIS/IMSC/ICR)
INT_RI, INT_CTS, INT_DCD, INT_DSR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
INT_RX, INT_TX, INT_RT = 1 << 4, 1 << 5, 1 << 6
INT_MS = INT_RI | INT_CTS | INT_DCD | INT_DSR
INT_E = 0x780
# The six outputs: combined, RX, TX, RT, MS, E
IRQ_MASKS = (INT_E | INT_MS | INT_RT | INT_TX | INT_RX, INT_RX, INT_TX, INT_RT, INT_MS, INT_E)

FIFO_DEPTH = 16
DR_BREAK = 0x400

# --- state ------------------------------------------------------------------------


class PL011(Device):
    name = "pl011"

    def __init__(self, irq: IRQ, transmit: Callable[[bytes], None]) -> None:
        self.irq = irq  # output 0, the combined line; the only one the board wires
        self.transmit = transmit
        self.read_fifo = [0] * FIFO_DEPTH
        self.reset()

    def reset(self) -> None:
        self.flags = FR_TXFE | FR_RXFE
        self.lcr = self.rsr = self.dmacr = self.ilpr = self.ibrd = self.fbrd = 0
        self.int_enabled = self.int_level = 0
        self.cr = 0x300
        self.ifl = 0x12
        self.read_trigger = 1
        self.read_pos = self.read_count = 0  # read_fifo keeps stale contents, as in QEMU
        self._update_irq()

    # --- receive FIFO ---------------------------------------------------------------

    @property
    def fifo_depth(self) -> int:
        return FIFO_DEPTH if self.lcr & LCR_FEN else 1

    @property
    def loopback(self) -> bool:
        return bool(self.cr & CR_LBE)

    def can_receive(self) -> int:
        """How many bytes the backend may deliver now (0 while in loopback)."""
        return 0 if self.loopback else self.fifo_depth - self.read_count

    def receive(self, data: bytes) -> int:
        """Bytes from the character backend; returns how many were accepted."""
        accepted = min(len(data), self.can_receive())
        for byte in data[:accepted]:
            self._put_fifo(byte)
        return accepted

    def receive_break(self) -> None:
        if not self.loopback:
            self._put_fifo(DR_BREAK)

    def _put_fifo(self, value: int) -> None:
        depth = self.fifo_depth
        self.read_fifo[(self.read_pos + self.read_count) & (depth - 1)] = value
        self.read_count += 1
        self.flags &= ~FR_RXFE
        if self.read_count == depth:
            self.flags |= FR_RXFF
        if self.read_count == self.read_trigger:
            self.int_level |= INT_RX
            self._update_irq()

    def _pop_fifo(self) -> int:
        self.flags &= ~FR_RXFF
        value = self.read_fifo[self.read_pos]
        if self.read_count > 0:
            self.read_count -= 1
            self.read_pos = (self.read_pos + 1) & (self.fifo_depth - 1)
        if self.read_count == 0:
            self.flags |= FR_RXFE
        if self.read_count == self.read_trigger - 1:
            self.int_level &= ~INT_RX
        self.rsr = value >> 8
        self._update_irq()
        return value

    # --- interrupts -----------------------------------------------------------------

    def _update_irq(self) -> None:
        self.irq.set(bool(self.int_level & self.int_enabled & IRQ_MASKS[0]))

    def _loopback_modem_update(self) -> None:
        fr = 0
        for cr_bit, fr_bit in ((CR_OUT2, FR_RI), (CR_OUT1, FR_DCD), (CR_RTS, FR_CTS),
                               (CR_DTR, FR_DSR)):
            if self.cr & cr_bit:
                fr |= fr_bit
        self.flags = (self.flags & ~(FR_RI | FR_DCD | FR_CTS | FR_DSR)) | fr
        ris = 0
        for fr_bit, int_bit in ((FR_DSR, INT_DSR), (FR_DCD, INT_DCD), (FR_CTS, INT_CTS),
                                (FR_RI, INT_RI)):
            if fr & fr_bit:
                ris |= int_bit
        self.int_level = (self.int_level & ~INT_MS) | ris
        self._update_irq()

    # --- MMIO -----------------------------------------------------------------------

    def peek(self, offset: int, size: int) -> int:
        """Register value without side effects (the debugger's view of DR)."""
        offset &= ~3  # any byte of a word selects the register
        if ID_BASE <= offset < ID_BASE + 4 * len(ARM_ID):
            return ARM_ID[(offset - ID_BASE) >> 2]
        values: dict[int, int] = {
            Reg.DR: self.read_fifo[self.read_pos],
            Reg.RSR: self.rsr,
            Reg.FR: self.flags,
            Reg.ILPR: self.ilpr,
            Reg.IBRD: self.ibrd,
            Reg.FBRD: self.fbrd,
            Reg.LCR_H: self.lcr,
            Reg.CR: self.cr,
            Reg.IFLS: self.ifl,
            Reg.IMSC: self.int_enabled,
            Reg.RIS: self.int_level,
            Reg.MIS: self.int_level & self.int_enabled,
            Reg.DMACR: self.dmacr,
        }
        return values.get(offset, 0)

    def read(self, offset: int, size: int) -> int:
        if offset & ~3 == Reg.DR:
            return self._pop_fifo()
        return self.peek(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        match offset & ~3:
            case Reg.DR:
                self.transmit(bytes([value & 0xFF]))
                if self.loopback:
                    self._put_fifo(value & 0xFF)
                self.int_level |= INT_TX
                self._update_irq()
            case Reg.RSR:
                self.rsr = 0
            case Reg.ILPR:
                self.ilpr = value
            case Reg.IBRD:
                self.ibrd = value & 0xFFFF
            case Reg.FBRD:
                self.fbrd = value & 0x3F
            case Reg.LCR_H:
                self._write_lcr(value)
            case Reg.CR:
                self.cr = value
                if self.loopback:
                    self._loopback_modem_update()
            case Reg.IFLS:
                self.ifl = value
            case Reg.IMSC:
                self.int_enabled = value
                self._update_irq()
            case Reg.ICR:
                self.int_level &= ~value
                self._update_irq()
            case Reg.DMACR:
                self.dmacr = value
            # FR, RIS, MIS, IDs and holes ignore writes

    def _write_lcr(self, value: int) -> None:
        if (self.lcr ^ value) & LCR_FEN:  # FIFO mode change discards received data
            self.read_count = self.read_pos = 0
            self.flags = (self.flags | FR_RXFE | FR_TXFE) & ~(FR_RXFF | FR_TXFF)
        if (self.lcr ^ value) & LCR_BRK and value & LCR_BRK and self.loopback:
            self._put_fifo(DR_BREAK)
        self.lcr = value
