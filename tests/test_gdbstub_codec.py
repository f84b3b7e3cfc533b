"""gdbstub.codec: framing, checksums, escaping, RLE and the byte-fed decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gdbstub.codec import (
    Ack,
    Corrupt,
    Decoder,
    Interrupt,
    Packet,
    checksum,
    encode_le,
    escape,
    frame,
    hex_decode,
    parse_int,
    rle_decode,
    unescape,
)


def test_frame_matches_the_manual_example() -> None:
    assert frame(b"OK") == b"$OK#9a"  # 'O' 0x4f + 'K' 0x4b = 0x9a
    assert frame(b"") == b"$#00"
    assert checksum(b"\xff\x02") == 0x01


@given(st.binary(max_size=3000))
def test_checksum_is_the_byte_sum_mod_256(data: bytes) -> None:
    assert checksum(data) == sum(data) % 256


def test_escape_covers_the_four_special_bytes() -> None:
    assert escape(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert unescape(b"}\x03}\x04}]}\x0a") == b"#$}*"


@given(st.binary(max_size=300))
def test_escape_round_trip_and_no_raw_specials(data: bytes) -> None:
    wire = escape(data)
    assert unescape(wire) == data
    assert not set(wire) & set(b"#$*")


def test_unescape_refuses_a_dangling_escape() -> None:
    with pytest.raises(ValueError):
        unescape(b"abc}")


@pytest.mark.parametrize("wire,plain", [
    (b"0* ", b"0000"),  # ' ' = 32: 3 more copies
    (b"a*!b", b"aaaaab"),  # '!' = 33: 4 more copies
    (b"xy*\"", b"xyyyyyy"),  # '"' = 34: 5 more
    (b"plain", b"plain"),
])
def test_rle_decode(wire: bytes, plain: bytes) -> None:
    assert rle_decode(wire) == plain


@pytest.mark.parametrize("wire", [b"*  ", b"a*", b"a*\x10"])
def test_rle_decode_rejects_malformed_runs(wire: bytes) -> None:
    with pytest.raises(ValueError):
        rle_decode(wire)


def test_hex_helpers() -> None:
    assert hex_decode(b"00ffA0") == b"\x00\xff\xa0"
    assert encode_le(0x80000000, 4) == b"00000080"
    assert parse_int(b"DeadBeef") == 0xDEADBEEF
    for bad in (b"", b"0x10", b"-1", b"1 "):
        with pytest.raises(ValueError):
            parse_int(bad)
    with pytest.raises(ValueError):
        hex_decode(b"abc")  # odd length


def test_decoder_events_between_packets() -> None:
    d = Decoder(64)
    events = d.feed(b"+$g#67-\x03junk$?#3f")
    assert events == [Ack(True), Packet(b"g"), Ack(False), Interrupt(), Packet(b"?")]


def test_decoder_bad_checksum_is_corrupt_and_stream_recovers() -> None:
    d = Decoder(64)
    assert d.feed(b"$g#00$g#67") == [Corrupt("checksum mismatch"), Packet(b"g")]
    assert d.feed(b"$g#zz") == [Corrupt("malformed checksum")]


def test_decoder_interrupt_byte_inside_a_packet_is_data() -> None:
    d = Decoder(64)
    payload = b"X80000000,1:\x03"
    assert d.feed(frame(payload)) == [Packet(payload)]


def test_decoder_oversized_packet_is_drained_then_refused() -> None:
    d = Decoder(16)
    big = frame(b"M0,20:" + b"00" * 32)
    assert d.feed(big + frame(b"g")) == [Corrupt("packet longer than 16 bytes"), Packet(b"g")]


def test_decoder_dollar_restarts_a_cut_packet() -> None:
    d = Decoder(64)
    assert d.feed(b"$m0,4$g#67") == [Corrupt("packet interrupted by a new one"), Packet(b"g")]


def test_decoder_decodes_rle() -> None:
    d = Decoder(64)
    assert d.feed(frame(b"0* ")) == [Packet(b"0000")]


@given(st.lists(st.binary(max_size=40), max_size=8), st.integers(1, 7))
def test_decoder_is_independent_of_chunking(payloads: list[bytes], chunk: int) -> None:
    wire = b"".join(frame(escape(p)) for p in payloads)
    d = Decoder(200)
    events = []
    for i in range(0, len(wire), chunk):
        events += d.feed(wire[i : i + chunk])
    assert [unescape(e.data) for e in events if isinstance(e, Packet)] == payloads
    assert len(events) == len(payloads)
