"""ARM PL011 UART, following QEMU's current model (docs/pl011.md).

Characters are instantaneous: there is no TX FIFO and no baud timing.  The RX
FIFO is 16 deep with FEN set and 1 deep without.  Differences from Debian's
QEMU 7.2 (which has no reset handler, no loopback, and no post_load checks) are
noted where they apply.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

from emud import trace
from emud.device import VMSTATE_CLOCK, ClockIn, Device, DeviceContext, prop_bool
from emud.irq import IRQ
from emud.vmstate import (
    INT32,
    UINT32,
    Field,
    State,
    Subsection,
    VMStateDescription,
    VMStateError,
    unused,
)

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
LUMINARY_ID = (0x11, 0x00, 0x18, 0x01, 0x0D, 0xF0, 0x05, 0xB1)
MMIO_SIZE = 0x1000

# Register names as QEMU's trace events print them
_REG_NAMES = {0: "DR", 1: "RSR", 6: "FR", 8: "ILPR", 9: "IBRD", 10: "FBRD", 11: "LCRH",
              12: "CR", 13: "IFLS", 14: "IMSC", 15: "RIS", 16: "MIS", 17: "ICR", 18: "DMACR"}

# FR bits
FR_CTS, FR_DSR, FR_DCD, FR_BUSY = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE, FR_RI = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FR_NAMES = ("CTS", "DSR", "DCD", "BUSY", "RXFE", "TXFF", "RXFF", "TXFE", "RI")
# LCR_H bits
LCR_BRK, LCR_PEN, LCR_EPS, LCR_STP2, LCR_FEN, LCR_SPS = 1, 2, 4, 8, 16, 128
LCR_WLEN_SHIFT = 5
# CR bits
CR_UARTEN, CR_LBE, CR_TXE, CR_RXE = 1 << 0, 1 << 7, 1 << 8, 1 << 9
CR_DTR, CR_RTS, CR_OUT1, CR_OUT2 = 1 << 10, 1 << 11, 1 << 12, 1 << 13
CR_NAMES = {0: "UARTEN", 1: "SIREN", 2: "SIRLP", 7: "LBE", 8: "TXE", 9: "RXE", 10: "DTR",
            11: "RTS", 12: "OUT1", 13: "OUT2", 14: "RTSEN", 15: "CTSEN"}
# interrupt bits (RIS/MIS/IMSC/ICR)
INT_RI, INT_CTS, INT_DCD, INT_DSR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
INT_RX, INT_TX, INT_RT = 1 << 4, 1 << 5, 1 << 6
INT_MS = INT_RI | INT_CTS | INT_DCD | INT_DSR
INT_E = 0x780
INT_NAMES = ("RI", "CTS", "DCD", "DSR", "RX", "TX", "RT", "FE", "PE", "BE", "OE")
# The six outputs: combined, RX, TX, RT, MS, E
IRQ_MASKS = (INT_E | INT_MS | INT_RT | INT_TX | INT_RX, INT_RX, INT_TX, INT_RT, INT_MS, INT_E)
IRQ_OUTPUT_NAMES = ("intr", "rxintr", "txintr", "rtintr", "msintr", "eintr")

FIFO_DEPTH = 16
DR_BREAK = 0x400
IBRD_MASK, FBRD_MASK = 0xFFFF, 0x3F  # QEMU >= 9.2 (9.1 had them swapped, 7.2 none)

# --- trace points (hw/char/trace-events) ------------------------------------------

trace_irq_state = trace.event("pl011_irq_state", "irq state %d")
trace_read = trace.event("pl011_read", "addr 0x%03x value 0x%08x reg %s")
trace_read_fifo = trace.event("pl011_read_fifo", "RX FIFO read, used %u/%u")
trace_write = trace.event("pl011_write", "addr 0x%03x value 0x%08x reg %s")
trace_can_receive = trace.event("pl011_can_receive",
                                "LCR 0x%02x, RX FIFO used %u/%u, can_receive %u chars")
trace_fifo_rx_put = trace.event("pl011_fifo_rx_put", "RX FIFO push char [0x%02x] %d/%u depth used")
trace_fifo_rx_full = trace.event("pl011_fifo_rx_full", "RX FIFO now full, RXFF set")
trace_baudrate_change = trace.event("pl011_baudrate_change",
                                    "new baudrate %u (clk: %uhz, ibrd: %u, fbrd: %u)")
trace_receive = trace.event("pl011_receive", "recv %d chars")


def _regname(offset: int) -> str:
    index = offset >> 2
    if index in _REG_NAMES:
        return _REG_NAMES[index]
    return "ID" if 0x3F8 <= index <= 0x3FF else "UNKN"


def _bit_names(value: int, names: Any) -> list[str]:
    items = names.items() if isinstance(names, dict) else enumerate(names)
    return [name for bit, name in items if value >> bit & 1]


# --- state ------------------------------------------------------------------------


class PL011(Device):
    name = "pl011"
    mmio_size = MMIO_SIZE
    ids = ARM_ID

    migrate_clk = prop_bool(True, name="migrate-clk",
                            doc="migrate the clock input (false on machine types <= 5.1)")

    description = "ARM PL011 UART (ARM IDs); takes the next -serial backend"
    wants_serial = True
    trace_events = (trace_irq_state, trace_read, trace_read_fifo, trace_write, trace_can_receive,
                    trace_fifo_rx_put, trace_fifo_rx_full, trace_baudrate_change, trace_receive)

    def __init__(self, **props: Any) -> None:
        super().__init__(**props)
        self.irqs = [IRQ(f"pl011.{n}") for n in IRQ_OUTPUT_NAMES]
        self.irq = self.irqs[0]  # UARTINTR, the combined output a board wires
        self.transmit: Callable[[bytes], None] = lambda data: None
        self.accept_input: Callable[[], None] = lambda: None
        self.clk = ClockIn()  # unconnected on emud-virt, like QEMU's virt board (0 Hz)
        self.read_fifo = [0] * FIFO_DEPTH
        self.flags = self.lcr = self.rsr = self.cr = self.dmacr = 0
        self.int_enabled = self.int_level = 0
        self.ilpr = self.ibrd = self.fbrd = self.ifl = 0
        self.read_pos = self.read_count = 0
        self.read_trigger = 1

    def do_realize(self, ctx: DeviceContext) -> None:
        """Transmit to the serial backend, take its input (QEMU's chardev front end);
        `accept_input` tells it the device may take more now."""
        if ctx.serial is not None:
            serial = ctx.serial
            self.transmit = serial.transmit
            self.accept_input = serial.accept_input
            serial.attach(self)

    def output_lines(self) -> dict[str, IRQ]:
        """`irq` (UARTINTR, combined), then the five individual outputs."""
        return {("irq" if n == 0 else name): line
                for n, (name, line) in enumerate(zip(IRQ_OUTPUT_NAMES, self.irqs, strict=True))}

    def reset(self) -> None:
        self.flags = FR_TXFE | FR_RXFE
        self.lcr = self.rsr = self.dmacr = self.ilpr = self.ibrd = self.fbrd = 0
        self.int_enabled = self.int_level = 0
        self.cr = CR_TXE | CR_RXE
        self.ifl = 0x12
        self.read_trigger = 1
        self.read_pos = self.read_count = 0  # read_fifo keeps stale contents, as in QEMU
        self._drive_outputs()  # no accept_input: the receiver is not ready after reset

    # --- receive FIFO ---------------------------------------------------------------

    @property
    def fifo_depth(self) -> int:
        return FIFO_DEPTH if self.lcr & LCR_FEN else 1

    @property
    def loopback(self) -> bool:
        return bool(self.cr & CR_LBE)

    @property
    def receiver_ready(self) -> bool:
        """Whether the guest can take the host's bytes: UART and receiver enabled
        (CR.UARTEN, CR.RXE), RX connected to the line (not loopback), 8-bit words.

        QEMU delivers regardless; emud holds input in the backend until then, so
        input that is ready before the guest (a file, a pipe) is not dropped into
        the reset-state 1-deep FIFO, which the guest's FIFO-enable write flushes.
        """
        return (self.cr & (CR_UARTEN | CR_RXE | CR_LBE) == CR_UARTEN | CR_RXE
                and self.lcr >> LCR_WLEN_SHIFT & 3 == 3)

    def fifo_room(self) -> int:
        """Free RX FIFO slots (what QEMU's can_receive answers)."""
        return max(0, self.fifo_depth - self.read_count)

    def can_receive(self) -> int:
        """How many bytes the backend may deliver now: free FIFO slots once ready."""
        available = self.fifo_room() if self.receiver_ready else 0
        trace_can_receive(self.lcr, self.read_count, self.fifo_depth, available)
        return available

    def receive(self, data: bytes) -> int:
        """Bytes from the character backend; returns how many were consumed.

        In loopback the RX input is disconnected: the bytes are consumed and dropped.
        """
        trace_receive(len(data))
        if self.loopback:
            return len(data)
        accepted = min(len(data), max(0, self.fifo_depth - self.read_count))
        for byte in data[:accepted]:
            self._put_fifo(byte)
        return accepted

    def receive_break(self) -> None:
        if not self.loopback:
            self._put_fifo(DR_BREAK)

    def _put_fifo(self, value: int) -> None:
        depth = self.fifo_depth
        if self.read_count >= depth:
            # Overrun (loopback TX or a break into a full FIFO): the byte is lost, as on
            # the hardware.  Newest QEMU overwrites a slot and counts past the depth, a
            # state its own post_load refuses, so a snapshot of it would not load.
            return
        self.read_fifo[(self.read_pos + self.read_count) & (depth - 1)] = value
        self.read_count += 1
        self.flags &= ~FR_RXFE
        trace_fifo_rx_put(value, self.read_count, depth)
        if self.read_count == depth:
            trace_fifo_rx_full()
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
        trace_read_fifo(self.read_count, self.fifo_depth)
        self.rsr = value >> 8
        self._update_irq()
        self.accept_input()
        return value

    # --- interrupts -----------------------------------------------------------------

    def _drive_outputs(self) -> None:
        flags = self.int_level & self.int_enabled
        for irq, mask in zip(self.irqs, IRQ_MASKS, strict=True):
            irq.set(bool(flags & mask))

    def _update_irq(self) -> None:
        trace_irq_state(int(bool(self.int_level & self.int_enabled)))
        self._drive_outputs()

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
        self._update_irq()  # on every loopback CR write, changed or not (newest QEMU)

    # --- baud rate (trace only) ---------------------------------------------------------

    @property
    def baudrate(self) -> int:
        if self.ibrd == 0:
            return 0
        return (self.clk.hz // ((self.ibrd << 6) + self.fbrd)) << 2

    def _trace_baudrate(self) -> None:
        if trace_baudrate_change.enabled:
            trace_baudrate_change(self.baudrate, self.clk.hz, self.ibrd, self.fbrd)

    # --- MMIO -----------------------------------------------------------------------

    def peek(self, offset: int, size: int) -> int:
        """Register value without side effects (the debugger's view of DR)."""
        offset &= ~3  # any byte of a word selects the register
        if ID_BASE <= offset < ID_BASE + 4 * len(self.ids):
            return self.ids[(offset - ID_BASE) >> 2]
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
        value = self._pop_fifo() if offset & ~3 == Reg.DR else self.peek(offset, size)
        trace_read(offset, value, _regname(offset))
        if not self._is_register(offset):
            self.ctx.guest_error(f"read of unknown register at offset 0x{offset:03x}")
        return value

    def _is_register(self, offset: int, write: bool = False) -> bool:
        """Whether the offset names a register (ICR is write-only, the IDs read-only)."""
        index = offset >> 2
        if index == Reg.ICR >> 2:
            return write
        return index in _REG_NAMES or ID_BASE <= offset & ~3 < ID_BASE + 4 * len(self.ids)

    def write(self, offset: int, value: int, size: int) -> None:
        value &= 0xFFFF_FFFF  # 32-bit registers
        trace_write(offset, value, _regname(offset))
        match offset & ~3:
            case Reg.DR:
                if not self.cr & CR_UARTEN or not self.cr & CR_TXE:
                    self.ctx.guest_error(f"byte 0x{value & 0xFF:02x} written to DR "
                                         f"while the transmitter is off (CR 0x{self.cr:04x})")
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
                self.ibrd = value & IBRD_MASK
                self._trace_baudrate()
            case Reg.FBRD:
                self.fbrd = value & FBRD_MASK
                self._trace_baudrate()
            case Reg.LCR_H:
                self._write_lcr(value)
                self.accept_input()  # the FIFO may be bigger or emptier, the words 8 bits
            case Reg.CR:
                self.cr = value
                if self.loopback:
                    self._loopback_modem_update()
                self.accept_input()  # the receiver may be on now
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
                if value & 3:  # RXDMAE, TXDMAE
                    self.ctx.unimp(f"DMA requested (DMACR 0x{value:x}): not modelled")
            case _:  # FR, RIS, MIS, IDs and holes ignore writes
                what = "read-only register" if self._is_register(offset) else "unknown offset"
                self.ctx.guest_error(f"write of 0x{value:x} to {what} "
                                     f"{_regname(offset)} at offset 0x{offset:03x}")

    def _write_lcr(self, value: int) -> None:
        if (self.lcr ^ value) & LCR_FEN:  # FIFO mode change discards received data
            self.read_count = self.read_pos = 0
            self.flags = (self.flags | FR_RXFE | FR_TXFE) & ~(FR_RXFF | FR_TXFF)
        if (self.lcr ^ value) & LCR_BRK and value & LCR_BRK and self.loopback:
            self._put_fifo(DR_BREAK)
        self.lcr = value

    # --- monitor --------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        mis = self.int_level & self.int_enabled
        pending = [self.read_fifo[(self.read_pos + i) & (self.fifo_depth - 1)]
                   for i in range(min(self.read_count, self.fifo_depth))]
        return {
            "fr": {"value": self.flags, "set": _bit_names(self.flags, FR_NAMES)},
            "cr": {"value": self.cr, "set": _bit_names(self.cr, CR_NAMES)},
            "lcr_h": {
                "value": self.lcr,
                "word_length": 5 + (self.lcr >> LCR_WLEN_SHIFT & 3),
                "fifo_enabled": bool(self.lcr & LCR_FEN),
                "parity": ("none" if not self.lcr & LCR_PEN else
                           "stick" if self.lcr & LCR_SPS else
                           "even" if self.lcr & LCR_EPS else "odd"),
                "stop_bits": 2 if self.lcr & LCR_STP2 else 1,
                "break": bool(self.lcr & LCR_BRK),
            },
            "imsc": {"value": self.int_enabled, "set": _bit_names(self.int_enabled, INT_NAMES)},
            "ris": {"value": self.int_level, "set": _bit_names(self.int_level, INT_NAMES)},
            "mis": {"value": mis, "set": _bit_names(mis, INT_NAMES)},
            "rx_fifo": {"count": self.read_count, "depth": self.fifo_depth,
                        "read_pos": self.read_pos, "pending": pending,
                        "receiver_ready": self.receiver_ready},  # else input waits
            "rsr": self.rsr,
            "ibrd": self.ibrd,
            "fbrd": self.fbrd,
            "ifls": self.ifl,
            "dmacr": self.dmacr,
            "baudrate": self.baudrate,
            "clock_hz": self.clk.hz,
            "loopback": self.loopback,
            "irq": self.irq.level,
        }

    @classmethod
    def render_info(cls, data: dict[str, Any]) -> str:
        return "\n".join(_pl011_lines(data))

    # --- vmstate --------------------------------------------------------------------

    def _loaded(self) -> None:
        # Held input enters once the whole machine is loaded (migration's apply), not
        # here: the PLIC, loaded after this section, would forget the line it raised.
        self._drive_outputs()


def _pl011_lines(r: dict[str, Any]) -> list[str]:
    def flags(name: str) -> str:
        reg = r[name.lower()]
        return f"  {name:<6} 0x{reg['value']:04x} [{' '.join(reg['set'])}]"

    lcr = r["lcr_h"]
    lcr_fields = [f"WLEN={lcr['word_length']}", f"parity={lcr['parity']}",
                  f"stop={lcr['stop_bits']}", *(["FEN"] if lcr["fifo_enabled"] else []),
                  *(["BRK"] if lcr["break"] else [])]
    fifo = r["rx_fifo"]
    pending = " ".join(f"{b:02x}" for b in fifo["pending"])
    baud = f"{r['baudrate']} baud" if r["baudrate"] else "baud rate not set"
    return [f"{r['id']} @ 0x{r['base']:016x}: chardev {r['chardev']}, PLIC source "
            f"{r['plic-source']} (line {('low', 'high')[bool(r['irq'])]})"
            f"{', loopback' if r['loopback'] else ''}",
            flags("FR"), flags("CR"),
            f"  LCR_H  0x{lcr['value']:04x} [{' '.join(lcr_fields)}]",
            flags("IMSC"), flags("RIS"), flags("MIS"),
            f"  IBRD   0x{r['ibrd']:04x}  FBRD 0x{r['fbrd']:02x}  ({baud}, "
            f"clock {r['clock_hz']} Hz)",
            f"  IFLS   0x{r['ifls']:04x}  DMACR 0x{r['dmacr']:04x}  RSR 0x{r['rsr']:x}",
            f"  RX FIFO {fifo['count']}/{fifo['depth']}" + (f": {pending}" if pending else "")]


class PL011Luminary(PL011):
    """QEMU's `pl011_luminary`: the same UART with Luminary Micro's ID registers."""

    name = "pl011_luminary"
    description = "PL011 UART with Luminary Micro's ID registers"
    ids = LUMINARY_ID


def _post_load(state: State, version_id: int) -> None:
    """QEMU >= 8.0: reject impossible FIFO indexes, then fix up what 7.2 could leave."""
    if not 0 <= state.read_pos < FIFO_DEPTH:
        raise VMStateError("pl011", f"{state.read_pos} is outside the FIFO (0..15)", "read_pos")
    if not 0 <= state.read_count <= FIFO_DEPTH:
        raise VMStateError("pl011", f"{state.read_count} is more than the FIFO holds (0..16)",
                           "read_count")
    if not state.lcr & LCR_FEN and state.read_count > 0 and state.read_pos > 0:
        # 7.2 walked read_pos through all 16 slots in character mode; the character
        # pending there moves to slot 0 where the 1-deep FIFO expects it.
        state.read_fifo[0] = state.read_fifo[state.read_pos]
        state.read_pos = 0
    state.ibrd &= IBRD_MASK
    state.fbrd &= FBRD_MASK


VMSTATE_PL011_CLOCK = VMStateDescription(
    "pl011/clock", 1, 1, [Field("clk", VMSTATE_CLOCK)])

VMSTATE_PL011 = VMStateDescription(
    "pl011", 2, 2,
    [
        unused(4),  # 7.2: readbuff, never used
        Field("flags", UINT32),
        Field("lcr", UINT32),
        Field("rsr", UINT32),
        Field("cr", UINT32),
        Field("dmacr", UINT32),
        Field("int_enabled", UINT32),
        Field("int_level", UINT32),
        Field("read_fifo", UINT32, num=FIFO_DEPTH),
        Field("ilpr", UINT32),
        Field("ibrd", UINT32),
        Field("fbrd", UINT32),
        Field("ifl", UINT32),
        Field("read_pos", INT32),
        Field("read_count", INT32),
        Field("read_trigger", INT32),
    ],
    subsections=[Subsection(VMSTATE_PL011_CLOCK, lambda s: s.migrate_clk)],
    post_load=_post_load,
    loaded=PL011._loaded,
)

PL011.vmstate = VMSTATE_PL011
