"""A bounded, seeded fuzz of the gdb port: random and mutated RSP input against the
real server (emud's target on a loopback TCP port, the machine running in the same
loop).  After every input a probe (`qC`) must be answered; everything the server
sends must be acks and well-formed packets; at the end a real debugging request
still works."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator

import pytest

from conftest import IMAGES
from emud.chardev import RingBackend
from emud.daemon import Daemon
from emud.gdbserver import EmudTarget
from emud.loader import load_elf
from emud.machine import Machine, RunState
from gdbstub.codec import checksum, escape, frame

SEED = 20261201
INPUTS = 6000
TIMEOUT = 20  # a failure guard per probe, not a timing check
# A filler the decoder swallows in any state (two checksum digits, or noise), then the probe.
PROBE = b"00" + frame(b"qC")
PROBE_REPLY = b"QC1"

IMAGE = IMAGES / "counter.elf"


def parse_stream(data: bytes) -> tuple[list[bytes], bytes]:
    """Split what the server sent into packets (acks dropped); the rest is incomplete.
    Anything but `+`, `-` and `$payload#cc` with a right checksum fails the test."""
    packets = []
    i = 0
    while i < len(data):
        b = data[i : i + 1]
        if b in (b"+", b"-"):
            i += 1
            continue
        assert b == b"$", f"stray byte {b!r} at {i} in {data[max(0, i - 20) : i + 20]!r}"
        end = data.find(b"#", i)
        if end < 0 or end + 3 > len(data):
            break
        payload = data[i + 1 : end]
        assert b"$" not in payload, data[i : end + 3]
        assert int(data[end + 1 : end + 3], 16) == checksum(payload), data[i : end + 3]
        packets.append(payload)
        i = end + 3
    return packets, data[i:]


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending = b""
        self.connections = 0
        self.replies = 0

    async def connect(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.pending = b""
        self.connections += 1

    async def send_and_probe(self, data: bytes) -> None:
        """Send `data` and a probe; wait for the probe's answer, checking every reply.
        A connection the input ended (D, k, vKill) is replaced by a new one."""
        assert self.writer is not None and self.reader is not None
        self.writer.write(data + PROBE)
        with_probe = False
        while not with_probe:
            chunk = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not chunk:  # the input ended the session: a new gdb must be served
                await self.connect()
                await self.send_and_probe(b"")
                return
            packets, self.pending = parse_stream(self.pending + chunk)
            self.replies += len(packets)
            with_probe = PROBE_REPLY in packets


def _hex(rng: random.Random, digits: int) -> bytes:
    return b"%x" % rng.getrandbits(4 * digits)


def _address(rng: random.Random, ram: int) -> int:
    return rng.choice([ram + rng.randrange(0x100000), rng.getrandbits(32),
                       0x1000_0000 + rng.randrange(0x40), 0xFFFF_FFFF - rng.randrange(8)])


def _packet(rng: random.Random, ram: int) -> bytes:
    """One packet payload (escaped where binary), valid-looking or not."""
    kind = rng.randrange(14)
    if kind == 0:  # random printable payload
        return bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(40))).replace(
            b"$", b"").replace(b"#", b"")
    if kind == 1:
        return b"m%x,%s" % (_address(rng, ram), _hex(rng, rng.randrange(1, 9)))
    if kind == 2:  # memory writes stay out of device registers (their models are fuzzed
        addr = ram + rng.randrange(0x100000)  # elsewhere); sizes may lie about the data
        data = rng.randbytes(rng.randrange(16))
        length = rng.choice([len(data), rng.randrange(32)])
        return b"M%x,%x:%s" % (addr, length, data.hex().encode())
    if kind == 3:  # binary write
        addr = rng.choice([ram + rng.randrange(0x100000), rng.getrandbits(32) | 0xF000_0000])
        data = rng.randbytes(rng.randrange(32))
        return b"X%x,%x:" % (addr, len(data)) + escape(data)
    if kind == 4:
        return b"p%x" % rng.choice([rng.randrange(40), rng.randrange(0x1100), rng.getrandbits(32)])
    if kind == 5:  # register writes: only GPRs, so the guest keeps a sane pc and trap vector
        value = rng.randbytes(rng.choice([4, 4, 2, 8]))
        return b"P%x=%s" % (rng.randrange(1, 32), value.hex().encode())
    if kind == 6:
        ztype = rng.choice(b"0123459")
        return b"%c%c,%x,%x" % (rng.choice(b"Zz"), ztype, _address(rng, ram),
                                rng.choice([1, 2, 4, 8, rng.getrandbits(24)]))
    if kind == 7:
        return rng.choice([b"vCont?", b"vCont;s:1;c", b"vCont;s", b"vCont;s:p1.1", b"vCont;q",
                           b"vCont;s:2", b"vCont;C%s" % _hex(rng, 2), b"vCont;x", b"vCont;"])
    if kind == 8:
        annex = rng.choice([b"features:read:target.xml", b"features:read:other.xml",
                            b"memory-map:read:", b"features:read"])
        span = (_hex(rng, rng.randrange(1, 9)), _hex(rng, rng.randrange(1, 9)))
        return b"qXfer:%s:%s,%s" % (annex, *span)
    if kind == 9:
        return rng.choice([b"g", b"?", b"qC", b"qAttached", b"qfThreadInfo", b"qsThreadInfo",
                           b"qSupported:swbreak+;hwbreak+", b"QStartNoAckMode", b"Hg0", b"Hc-1",
                           b"T1", b"qqemu.sstepbits", b"qqemu.sstep",
                           b"Qqemu.sstep=%s" % _hex(rng, 2)])
    if kind == 10:
        return b"G" + rng.randbytes(rng.randrange(140)).hex().encode()
    if kind == 11:  # resumes with and without addresses and signals
        # (continues are rarer: the guest then runs until a Ctrl-C input, which is slow)
        return rng.choice([b"c", b"s", b"s", b"s%x" % (ram + 2 * rng.randrange(100)), b"S02",
                           b"S05;%x" % ram, b"Czz", b"s%s" % _hex(rng, 9)])
    if kind == 12:
        return b"qRcmd," + rng.choice([b"info registers", b"info mtree", b"x/4x 0x80000000",
                                       rng.randbytes(8)]).hex().encode()
    if rng.randrange(4):
        return b"g"
    # Each ends the session, and the guest runs until the next connection: fewer of them.
    return rng.choice([b"D", b"k", b"vKill;1"])


def _mutate(rng: random.Random, wire: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        match rng.randrange(3):
            case 0:
                data[i] = rng.randrange(256)
            case 1:
                del data[i]
            case _:
                data.insert(i, rng.choice(b"$#}*\x03+-"))
    return bytes(data)


def fuzz_input(rng: random.Random, ram: int) -> bytes:
    kind = rng.randrange(10)
    if kind == 7 and rng.randrange(4):  # huge inputs are slow to send: fewer of them
        kind = 0
    if kind < 5:
        return frame(_packet(rng, ram))
    if kind == 5:  # a bad checksum
        return frame(_packet(rng, ram))[:-2] + b"%02x" % rng.randrange(256)
    if kind == 6:
        return _mutate(rng, frame(_packet(rng, ram)))
    if kind == 7:  # huge: more than the packet size, drained and refused
        return b"$m" + b"0" * rng.randrange(0x10000, 0x10400) + b"#00"
    if kind == 8:  # line noise and Ctrl-C
        return rng.randbytes(rng.randrange(1, 64)).replace(b"$", b"")
    return b"\x03" * rng.randrange(1, 3)  # also latched between resumes


class ShortSlices(Machine):
    """Resumed by the fuzz, the guest runs until a Ctrl-C input; every input in between
    waits for a slice, so short slices keep the time on the stub."""

    def run_slice(self, limit: int = 500) -> RunState:
        return super().run_slice(min(limit, 500))


@pytest.fixture
async def served() -> AsyncIterator[tuple[Daemon, int]]:
    machine = ShortSlices(RingBackend())
    machine.load(load_elf(IMAGE))
    daemon = Daemon(machine, exit_on_poweroff=False)
    target = EmudTarget(daemon)
    sock = socket.create_server(("127.0.0.1", 0))
    await target.server.serve(sock)
    run = asyncio.create_task(daemon.run())
    yield daemon, sock.getsockname()[1]
    await target.server.close()
    daemon.quit()
    await asyncio.wait_for(run, TIMEOUT)


async def test_fuzzed_packets_never_stop_the_server(served: tuple[Daemon, int],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    daemon, port = served
    ram = daemon.machine.ram.base
    rng = random.Random(SEED)
    client = Client(port)
    await client.connect()
    sent = 0
    for _ in range(INPUTS):
        data = fuzz_input(rng, ram)
        sent += len(data)
        await client.send_and_probe(data)
    assert client.replies > INPUTS and client.connections > 1  # the inputs did reach it

    # A real request still works: reset, break at main, run there.
    await client.send_and_probe(frame(b"k"))
    assert client.writer is not None and client.reader is not None
    main = load_elf(IMAGE).symbols["main"]
    client.writer.write(b"00" + frame(b"z0,%x,2" % main) + frame(b"Z0,%x,2" % main) + frame(b"c"))
    data = b""
    while not any(p.startswith(b"T05") for p in parse_stream(data)[0]):
        chunk = await asyncio.wait_for(client.reader.read(65536), TIMEOUT)
        assert chunk, "the server closed the connection"
        data += chunk
    assert daemon.machine.hart.pc == main
    assert "Traceback" not in capsys.readouterr().err
    print(f"fuzz: {INPUTS} inputs, {sent} bytes, {client.replies} replies, "
          f"{client.connections} connections")


def test_the_stream_checker_rejects_garbage() -> None:
    assert parse_stream(b"+" + frame(b"OK") + b"$T0") == ([b"OK"], b"$T0")
    with pytest.raises(AssertionError):
        parse_stream(b"$OK#00")
    with pytest.raises(AssertionError):
        parse_stream(b"x" + frame(b"OK"))

