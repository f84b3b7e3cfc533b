"""GDB remote serial protocol framing: pure functions and a byte-fed packet decoder.

A packet is `$payload#cc`, where `cc` is the sum of the payload's wire bytes
modulo 256 in two hex digits.  Binary payloads escape `# $ } *` as `}` then the
byte XOR 0x20.  Outside a packet, `+`/`-` acknowledge and 0x03 is Ctrl-C.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

INTERRUPT = 0x03
ESCAPE = 0x7D  # '}'
_MUST_ESCAPE = frozenset(b"#$}*")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def checksum(payload: bytes) -> int:
    # Adler-32's first half is 1 + the byte sum (mod 65521); over 256 bytes the sum stays
    # below the modulus, so C sums each chunk: several times faster than sum() per byte.
    view = memoryview(payload)
    return sum(zlib.adler32(view[i : i + 256]) - 1 for i in range(0, len(view), 256)) & 0xFF


def frame(payload: bytes) -> bytes:
    """The wire form of a packet; `payload` must already be escaped where binary."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape(data: bytes) -> bytes:
    if not any(b in _MUST_ESCAPE for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _MUST_ESCAPE:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    if ESCAPE not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("escape character at the end of the data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def rle_decode(data: bytes) -> bytes:
    """Expand `c*n` runs: the count character n means n - 29 more copies of c."""
    if b"*" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == ord("*"):
            if not out or i + 1 >= len(data) or data[i + 1] < 29 + 3:
                raise ValueError("malformed run-length encoding")
            out += out[-1:] * (data[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def hex_encode(data: bytes) -> bytes:
    return data.hex().encode()


def hex_decode(text: bytes) -> bytes:
    """Hex digits to bytes; ValueError on anything else (including odd length)."""
    if not all(c in _HEX_DIGITS for c in text):
        raise ValueError("not hex")
    return bytes.fromhex(text.decode())


def parse_int(text: bytes) -> int:
    """A hex number as gdb sends it (no sign, no prefix)."""
    if not text or not all(c in _HEX_DIGITS for c in text):
        raise ValueError(f"bad hex number {text!r}")
    return int(text, 16)


def encode_le(value: int, size: int) -> bytes:
    return hex_encode((value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


# --- the decoder ------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """A well-formed packet; `data` is RLE-decoded but still escaped."""

    data: bytes


@dataclass(frozen=True)
class Corrupt:
    """A packet that must be refused (`-` in ack mode): bad checksum, too long, cut."""

    reason: str


@dataclass(frozen=True)
class Ack:
    positive: bool


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C (0x03) outside a packet."""


Event = Packet | Corrupt | Ack | Interrupt

_IDLE, _DATA, _CSUM = range(3)


class Decoder:
    """Turns a byte stream into events.  Packets longer than `max_size` wire bytes
    are drained up to their checksum and reported as Corrupt, so the stream
    stays in step."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._state = _IDLE
        self._buf = bytearray()
        self._length = 0
        self._csum = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        i, n = 0, len(data)
        while i < n:
            if self._state == _IDLE:
                b = data[i]
                i += 1
                if b == ord("$"):
                    self._start()
                elif b == ord("+"):
                    events.append(Ack(True))
                elif b == ord("-"):
                    events.append(Ack(False))
                elif b == INTERRUPT:
                    events.append(Interrupt())
                # anything else between packets is line noise: ignored
            elif self._state == _DATA:
                end = data.find(b"#", i)
                stop = n if end < 0 else end
                restart = data.find(b"$", i, stop)
                if restart >= 0:  # a raw '$' is never payload: the previous packet was cut
                    events.append(Corrupt("packet interrupted by a new one"))
                    i = restart + 1
                    self._start()
                    continue
                if self._length <= self.max_size:
                    self._buf += data[i : min(stop, i + self.max_size + 1 - self._length)]
                self._length += stop - i
                i = stop
                if end >= 0:
                    i += 1
                    self._state = _CSUM
            else:
                self._csum.append(data[i])
                i += 1
                if len(self._csum) == 2:
                    events.append(self._finish())
                    self._state = _IDLE
        return events

    def _start(self) -> None:
        self._state = _DATA
        self._buf.clear()
        self._csum.clear()
        self._length = 0

    def _finish(self) -> Event:
        if self._length > self.max_size:
            return Corrupt(f"packet longer than {self.max_size} bytes")
        try:
            expected = parse_int(bytes(self._csum))
        except ValueError:
            return Corrupt("malformed checksum")
        payload = bytes(self._buf)
        if checksum(payload) != expected:
            return Corrupt("checksum mismatch")
        try:
            return Packet(rle_decode(payload))
        except ValueError as e:
            return Corrupt(str(e))
