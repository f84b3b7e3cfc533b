"""PL011 model: registers, FIFO, loopback, interrupts and migration (docs/pl011.md, "new")."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Capture
from emud.device import DeviceContext, DeviceError
from emud.hw.pl011 import PL011, VMSTATE_PL011, PL011Luminary, Reg
from emud.vmstate import VMStateError

FR_RXFE, FR_TXFF, FR_RXFF, FR_TXFE = 0x10, 0x20, 0x40, 0x80
LCR_BRK, LCR_FEN = 0x01, 0x10
CR_LBE, CR_DTR, CR_RTS, CR_OUT1, CR_OUT2 = 0x80, 0x400, 0x800, 0x1000, 0x2000
INT_RX, INT_TX = 0x10, 0x20


class Rig:
    def __init__(self, cls: type[PL011] = PL011, **props: Any) -> None:
        backend = Capture()
        self.sent = backend.sent
        self.uart = cls(**props)
        self.uart.realize(DeviceContext(serial=backend))

    def w(self, offset: int, value: int) -> None:
        self.uart.write(offset, value, 4)

    def r(self, offset: int) -> int:
        return self.uart.read(offset, 4)


def test_reset_values() -> None:
    rig = Rig()
    assert rig.r(Reg.FR) == 0x90 and rig.r(Reg.CR) == 0x300 and rig.r(Reg.IFLS) == 0x12
    for reg in (Reg.RSR, Reg.ILPR, Reg.IBRD, Reg.FBRD, Reg.LCR_H, Reg.IMSC, Reg.RIS, Reg.MIS,
                Reg.DMACR, Reg.ICR):
        assert rig.r(reg) == 0


def test_id_registers() -> None:
    assert [Rig().r(0xFE0 + 4 * i) for i in range(8)] == [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0,
                                                          0x05, 0xB1]
    assert [Rig(PL011Luminary).r(0xFE0 + 4 * i) for i in range(8)] == [
        0x11, 0x00, 0x18, 0x01, 0x0D, 0xF0, 0x05, 0xB1]
    rig = Rig()
    rig.w(0xFE0, 0)
    assert rig.r(0xFE0) == 0x11


def test_character_mode_holds_one_byte() -> None:
    rig = Rig()
    assert rig.uart.fifo_room() == 1
    assert rig.uart.receive(b"AB") == 1
    assert rig.r(Reg.FR) == FR_TXFE | FR_RXFF and rig.uart.fifo_room() == 0
    assert rig.r(Reg.DR) == 0x41 and rig.r(Reg.FR) == FR_TXFE | FR_RXFE
    assert rig.r(Reg.DR) == 0x41  # empty: a stale slot, nothing popped


def test_fifo_mode_holds_sixteen_and_reports_full() -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, LCR_FEN | 0x60)
    assert rig.uart.receive(bytes(range(0x30, 0x50))) == 16
    assert rig.r(Reg.FR) & FR_RXFF
    assert [rig.r(Reg.DR) for _ in range(16)] == list(range(0x30, 0x40))
    assert rig.r(Reg.FR) == FR_TXFE | FR_RXFE


def test_fen_change_discards_received_data_and_resets_flags() -> None:
    rig = Rig()
    rig.uart.receive(b"x")
    rig.w(Reg.LCR_H, LCR_FEN)
    assert rig.r(Reg.FR) == FR_TXFE | FR_RXFE and rig.uart.read_count == 0


def test_rx_interrupt_follows_the_fifo_level_and_icr() -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, LCR_FEN)
    rig.w(Reg.IMSC, INT_RX)
    rig.uart.receive(b"ab")
    assert rig.uart.irq.level and rig.uart.irqs[1].level and rig.r(Reg.MIS) == INT_RX
    rig.w(Reg.ICR, INT_RX)
    assert not rig.uart.irq.level
    rig.r(Reg.DR)
    rig.r(Reg.DR)
    rig.uart.receive(b"c")  # raised again only when the FIFO goes from empty to one
    assert rig.uart.irq.level


def test_tx_is_instant_and_raises_tx_until_cleared() -> None:
    rig = Rig()
    rig.w(Reg.IMSC, INT_TX)
    rig.w(Reg.DR, 0x168)
    assert rig.sent == b"h" and rig.r(Reg.RIS) == INT_TX and rig.uart.irqs[2].level
    assert rig.r(Reg.FR) == FR_TXFE | FR_RXFE  # no TX FIFO: always empty
    rig.w(Reg.ICR, 0xFFFF)
    assert rig.r(Reg.RIS) == 0 and not rig.uart.irq.level


def test_break_reaches_rsr_when_its_entry_is_read() -> None:
    rig = Rig()
    rig.uart.receive_break()
    assert rig.r(Reg.RSR) == 0
    assert rig.r(Reg.DR) == 0x400 and rig.r(Reg.RSR) == 0x4
    rig.w(Reg.RSR, 0x1234)  # ECR: any write clears
    assert rig.r(Reg.RSR) == 0


def test_any_byte_of_a_word_selects_the_register() -> None:
    rig = Rig()
    rig.uart.receive(b"Q")
    assert rig.uart.read(Reg.DR + 1, 1) == ord("Q") and rig.uart.read_count == 0
    rig.uart.write(Reg.IMSC + 2, 0x30, 1)
    assert rig.r(Reg.IMSC) == 0x30


def test_baud_divisor_masks() -> None:
    rig = Rig()
    rig.w(Reg.IBRD, 0x12345)
    rig.w(Reg.FBRD, 0xFF)
    assert rig.r(Reg.IBRD) == 0x2345 and rig.r(Reg.FBRD) == 0x3F


def test_loopback_sends_out_and_back_and_ignores_the_backend() -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, LCR_FEN)
    rig.w(Reg.CR, 0x300 | CR_LBE)
    rig.w(Reg.DR, ord("z"))
    assert rig.sent == b"z" and rig.r(Reg.DR) == ord("z")
    assert rig.uart.receive(b"ignored") == 7 and rig.uart.read_count == 0
    rig.w(Reg.LCR_H, LCR_FEN | LCR_BRK)
    assert rig.r(Reg.DR) == 0x400


@pytest.mark.parametrize("lcr,depth", [(0, 1), (LCR_FEN, 16)])
def test_loopback_overrun_drops_the_byte_and_the_state_still_loads(lcr: int, depth: int) -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, lcr)
    rig.w(Reg.CR, 0x300 | CR_LBE)
    for byte in b"0123456789abcdefghij":  # more than the FIFO holds, nobody reading
        rig.w(Reg.DR, byte)
    assert rig.sent == b"0123456789abcdefghij"  # every byte still goes out
    assert rig.uart.read_count == depth and rig.r(Reg.FR) & FR_RXFF
    saved = VMSTATE_PL011.save(rig.uart)
    VMSTATE_PL011.load(rig.uart, saved, 2)  # a reachable state: it must load
    assert bytes(rig.r(Reg.DR) & 0xFF for _ in range(depth)) == b"0123456789abcdef"[:depth]
    assert rig.r(Reg.FR) & FR_RXFE


def test_loopback_drives_modem_status_from_cr() -> None:
    rig = Rig()
    rig.w(Reg.IMSC, 0xF)
    rig.w(Reg.CR, CR_LBE | CR_DTR | CR_RTS | CR_OUT1 | CR_OUT2)
    assert rig.r(Reg.FR) & 0x107 == 0x107  # RI, DCD, DSR, CTS
    assert rig.r(Reg.RIS) == 0xF and rig.uart.irqs[4].level
    rig.w(Reg.CR, CR_LBE | CR_DTR)
    assert rig.r(Reg.RIS) == 0x8
    rig.w(Reg.CR, 0)  # leaving loopback keeps the modem bits as they were
    assert rig.r(Reg.RIS) == 0x8


def test_migrate_clk_property() -> None:
    assert Rig(**{"migrate-clk": False}).uart.migrate_clk is False
    with pytest.raises(DeviceError, match="pl011: property 'migrate-clk' must be on or off"):
        Rig(**{"migrate-clk": 2})


def test_info_decodes_registers() -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, 0x70)
    rig.w(Reg.IMSC, INT_RX)
    rig.uart.receive(b"ab")
    info = rig.uart.info()
    assert info["lcr_h"]["word_length"] == 8 and info["lcr_h"]["fifo_enabled"]
    assert info["fr"]["set"] == ["TXFE"]
    assert info["mis"]["set"] == ["RX"] and info["irq"]
    assert info["rx_fifo"] == {"count": 2, "depth": 16, "read_pos": 0, "pending": [0x61, 0x62],
                               "receiver_ready": False}  # UARTEN is clear
    assert info["cr"]["set"] == ["TXE", "RXE"]
    rig.w(Reg.CR, 0x301)
    assert rig.uart.info()["rx_fifo"]["receiver_ready"]


# --- migration ------------------------------------------------------------------------

# pl011.md §9.2: virt-7.2, LCR_H 0x70, IBRD 0x1a, FBRD 3, IMSC 0x50
QEMU_72_PL011 = bytes.fromhex(
    "04 00000009 05" + b"pl011".hex() + "00000000 00000002"
    "00000000 00000090 00000070 00000000 00000300 00000000 00000050 00000000"
    + "00" * 64 +
    "00000000 0000001a 00000003 00000012 00000000 00000000 00000001"
    "05 0b" + b"pl011/clock".hex() + "00000001 0000000000000000"
    "7e 00000009"
)
PAYLOAD = QEMU_72_PL011[19:-5]


def configured() -> Rig:
    rig = Rig()
    rig.w(Reg.LCR_H, 0x70)
    rig.w(Reg.IBRD, 0x1A)
    rig.w(Reg.FBRD, 3)
    rig.w(Reg.IMSC, 0x50)
    return rig


def test_register_writes_give_qemus_section_bytes() -> None:
    assert VMSTATE_PL011.save_section(configured().uart, 9) == QEMU_72_PL011


def test_qemu_dump_loads_and_saves_back_identically() -> None:
    rig = Rig()
    VMSTATE_PL011.load_section(rig.uart, QEMU_72_PL011)
    assert rig.r(Reg.LCR_H) == 0x70 and rig.r(Reg.IBRD) == 0x1A and rig.r(Reg.IMSC) == 0x50
    assert VMSTATE_PL011.save_section(rig.uart, 9) == QEMU_72_PL011


def test_without_migrate_clk_there_is_no_clock_subsection() -> None:
    rig = Rig(**{"migrate-clk": False})
    assert VMSTATE_PL011.save(rig.uart) == VMSTATE_PL011.save(Rig().uart)[:-25]
    VMSTATE_PL011.load(rig.uart, PAYLOAD, 2)  # a stream that has it still loads


def test_clock_subsection_with_muldiv_loads() -> None:
    data = PAYLOAD[:-8] + (1_000_000 << 32).to_bytes(8, "big") + bytes.fromhex(
        "05 0c") + b"clock/muldiv" + bytes.fromhex("00000001 00000002 00000003")
    rig = Rig()
    VMSTATE_PL011.load(rig.uart, data, 2)
    assert rig.uart.clk.hz == 1000 and (rig.uart.clk.multiplier, rig.uart.clk.divider) == (2, 3)
    assert VMSTATE_PL011.save(rig.uart) == data
    VMSTATE_PL011.load(rig.uart, PAYLOAD, 2)  # absent muldiv means 1/1
    assert (rig.uart.clk.multiplier, rig.uart.clk.divider) == (1, 1)


def with_field(name: str, value: int, payload: bytes = PAYLOAD) -> bytes:
    offsets = {"lcr": 8, "read_fifo[5]": 52, "ibrd": 100, "fbrd": 104, "read_pos": 112,
               "read_count": 116}
    data = bytearray(payload)
    data[offsets[name]:offsets[name] + 4] = value.to_bytes(4, "big", signed=True)
    return bytes(data)


@pytest.mark.parametrize("name, value, message", [
    ("read_pos", 16, "pl011: field 'read_pos': 16 is outside the FIFO"),
    ("read_pos", -1, "pl011: field 'read_pos': -1 is outside the FIFO"),
    ("read_count", 17, "pl011: field 'read_count': 17 is more than the FIFO holds"),
    ("read_count", -3, "pl011: field 'read_count': -3 is more than the FIFO holds"),
])
def test_post_load_rejects_impossible_fifo_indexes(name: str, value: int, message: str) -> None:
    rig = configured()
    rig.uart.receive(b"k")
    before = VMSTATE_PL011.save(rig.uart)
    with pytest.raises(VMStateError, match=message):
        VMSTATE_PL011.load(rig.uart, with_field(name, value), 2)
    assert VMSTATE_PL011.save(rig.uart) == before


def test_post_load_moves_a_72_character_mode_byte_to_slot_0_and_masks_divisors() -> None:
    data = PAYLOAD
    for name, value in (("lcr", 0), ("read_fifo[5]", 0x41), ("read_pos", 5), ("read_count", 1),
                        ("ibrd", 0x12345), ("fbrd", 0xFF)):
        data = with_field(name, value, data)
    rig = Rig()
    VMSTATE_PL011.load(rig.uart, data, 2)
    assert rig.uart.read_pos == 0 and rig.r(Reg.DR) == 0x41
    assert rig.r(Reg.IBRD) == 0x2345 and rig.r(Reg.FBRD) == 0x3F


def test_loading_drives_the_interrupt_line_from_the_state() -> None:
    src = configured()
    src.uart.receive(b"x")
    dst = Rig()
    VMSTATE_PL011.load(dst.uart, VMSTATE_PL011.save(src.uart), 2)
    assert dst.uart.irq.level and dst.uart.irqs[1].level


def test_description_matches_qemus_vmdesc() -> None:
    desc = VMSTATE_PL011.describe(Rig().uart)
    u32 = ["flags", "lcr", "rsr", "cr", "dmacr", "int_enabled", "int_level"]
    assert desc["fields"] == (
        [{"name": "unused", "type": "unused_buffer", "size": 4}]
        + [{"name": n, "type": "uint32", "size": 4} for n in u32]
        + [{"name": "read_fifo", "array_len": 16, "type": "uint32", "size": 4}]
        + [{"name": n, "type": "uint32", "size": 4} for n in ("ilpr", "ibrd", "fbrd", "ifl")]
        + [{"name": n, "type": "int32", "size": 4}
           for n in ("read_pos", "read_count", "read_trigger")])
    assert desc["subsections"] == [{"vmsd_name": "pl011/clock", "version": 1, "fields": [
        {"name": "clk", "type": "struct", "struct": {
            "vmsd_name": "clock", "version": 0,
            "fields": [{"name": "period", "type": "uint64", "size": 8}]}, "size": 8}]}]


# --- properties of the model (hypothesis) ---------------------------------------------

REGS = [0x000, 0x004, 0x018, 0x020, 0x024, 0x028, 0x02C, 0x030, 0x034, 0x038, 0x03C, 0x040,
        0x044, 0x048, 0x04C, 0xFE0, 0xFFC]
U32 = st.integers(0, 0xFFFFFFFF)
VALUES = st.one_of(U32, st.sampled_from([0, 0x10, 0x70, 0x80, 0x81, 0x380, 0x3C80, 0x7FF]))
STEPS = st.lists(st.one_of(
    st.tuples(st.just("w"), st.sampled_from(REGS), VALUES, st.sampled_from([1, 2, 4])),
    st.tuples(st.just("r"), st.sampled_from(REGS), st.just(0), st.sampled_from([1, 4])),
    st.tuples(st.just("rx"), st.just(0), st.integers(0, 255), st.integers(1, 20)),
    st.tuples(st.just("brk"), st.just(0), st.just(0), st.just(0)),
), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS)
def test_random_register_writes_never_raise(steps: list[tuple[str, int, int, int]]) -> None:
    rig = Rig()
    for kind, offset, value, size in steps:
        if kind == "w":
            rig.uart.write(offset, value & ((1 << 8 * size) - 1), size)
        elif kind == "r":
            rig.uart.read(offset, size)
        elif kind == "rx":
            rig.uart.receive(bytes([value]) * size)
        else:
            rig.uart.receive_break()
    rig.uart.info()
    VMSTATE_PL011.save(rig.uart)


@st.composite
def states(draw: st.DrawFn) -> dict[str, Any]:
    lcr = draw(U32)
    count = draw(st.integers(0, 16 if lcr & LCR_FEN else 1))
    return {
        "flags": draw(U32), "lcr": lcr, "rsr": draw(U32), "cr": draw(U32),
        "dmacr": draw(U32), "int_enabled": draw(U32), "int_level": draw(U32),
        "read_fifo": draw(st.lists(st.integers(0, 0x7FF), min_size=16, max_size=16)),
        "ilpr": draw(U32), "ibrd": draw(st.integers(0, 0xFFFF)),
        "fbrd": draw(st.integers(0, 0x3F)), "ifl": draw(U32),
        "read_pos": draw(st.integers(0, 15 if lcr & LCR_FEN else 0)), "read_count": count,
        "read_trigger": 1,
    }


@settings(max_examples=150, deadline=None)
@given(state=states())
def test_random_state_survives_save_and_load(state: dict[str, Any]) -> None:
    src, dst = Rig(), Rig()
    for name, value in state.items():
        setattr(src.uart, name, value)
    VMSTATE_PL011.load(dst.uart, VMSTATE_PL011.save(src.uart), 2)
    assert [dst.uart.peek(r, 4) for r in REGS] == [src.uart.peek(r, 4) for r in REGS]
    assert [dst.r(Reg.DR) for _ in range(17)] == [src.r(Reg.DR) for _ in range(17)]
    assert [dst.uart.peek(r, 4) for r in REGS] == [src.uart.peek(r, 4) for r in REGS]
