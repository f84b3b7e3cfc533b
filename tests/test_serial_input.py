"""Serial input enters the PL011 when the guest can take it (README "Running a guest").

The backend holds input and delivers it when the UART frees FIFO space or its
receiver becomes ready, so nothing waits for a run slice to end: long input
from a file, a pipe, a socket or `ringbuf-write` is echoed completely, the
first byte is not flushed by the guest's FIFO-enable write, and when a byte
enters the FIFO depends only on the guest, never on how the run is sliced.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemu.qmp import EventListener, QMPClient

import emud
from conftest import IMAGES, ROOT, boot, serial_text
from emud import migration
from emud.chardev import INPUT_BACKLOG, StdioBackend
from emud.device import DeviceContext
from emud.hw.pl011 import PL011, Reg
from emud.machine import RunState

TIMEOUT = 30.0  # a safety net only: every wait below ends on output or an event
ECHO = IMAGES / "uart_echo.elf"
LINE = b"a line longer than the sixteen-byte FIFO\n"
EMUD = [sys.executable, "-m", "emud", "run"]


def echo_of(data: bytes) -> bytes:
    """What uart_echo prints for `data` ending in 'q'."""
    return b"echo: ready\n" + data[:-1] + b"\necho: %d bytes\n" % len(data)


# --- the device and the backend ---------------------------------------------------


class Rig:
    def __init__(self) -> None:
        self.backend = StdioBackend(out=io.BytesIO(), input_fd=-1)
        self.uart = PL011()
        self.uart.realize(DeviceContext(serial=self.backend))

    def w(self, reg: int, value: int) -> None:
        self.uart.write(reg, value, 4)

    def drain(self) -> bytes:
        out = bytearray()
        while not self.uart.read(Reg.FR, 4) & 0x10:  # RXFE
            out.append(self.uart.read(Reg.DR, 4) & 0xFF)
        return bytes(out)

    async def enable_and_receive(self, count: int) -> bytes:
        """Turn the receiver on (FIFO mode, 8-bit words) and read until `count` bytes came."""
        self.w(Reg.LCR_H, 0x70)
        self.w(Reg.CR, 0x301)
        received = bytearray()
        async with asyncio.timeout(TIMEOUT):
            while len(received) < count:
                received += self.drain()
                await asyncio.sleep(0)
        return bytes(received)


@pytest.mark.parametrize("setup,ready", [
    ([], False),                                   # reset: UARTEN clear, 5-bit words
    ([(Reg.CR, 0x301)], False),                    # enabled, still 5-bit words
    ([(Reg.LCR_H, 0x60)], False),                  # 8-bit words, UART disabled
    ([(Reg.LCR_H, 0x60), (Reg.CR, 0x101)], False),  # receiver (RXE) off
    ([(Reg.LCR_H, 0x60), (Reg.CR, 0x381)], False),  # loopback: RX is not on the line
    ([(Reg.LCR_H, 0x60), (Reg.CR, 0x301)], True),
    ([(Reg.CR, 0x301), (Reg.LCR_H, 0x70)], True),
])
def test_input_is_held_until_the_receiver_is_ready(setup: list[tuple[int, int]],
                                                  ready: bool) -> None:
    rig = Rig()
    rig.backend.feed(b"xyz")
    for reg, value in setup:
        rig.w(reg, value)
    assert rig.uart.receiver_ready is ready
    taken = min(3, rig.uart.fifo_depth) if ready else 0
    assert rig.uart.read_count == taken and rig.backend.pending_input == 3 - taken


def test_the_fifo_enable_write_does_not_lose_the_first_byte() -> None:
    rig = Rig()
    rig.backend.feed(LINE)
    rig.w(Reg.CR, 0x301)  # crt0's uart_init: before the FIFO is on, in 5-bit words
    rig.w(Reg.LCR_H, 0x70)  # uart_echo: FIFO, 8-bit words; flushing the (empty) FIFO
    assert rig.uart.read_count == 16 and rig.backend.pending_input == len(LINE) - 16
    assert rig.drain() == LINE  # each DR read makes room for the next held byte


def test_held_input_follows_when_the_receiver_comes_back() -> None:
    rig = Rig()
    rig.w(Reg.LCR_H, 0x70)
    rig.w(Reg.CR, 0x301)
    rig.w(Reg.CR, 0x101)  # receiver off: input waits
    rig.backend.feed(b"later")
    assert rig.uart.read_count == 0 and rig.backend.pending_input == 5
    rig.w(Reg.CR, 0x301)
    assert rig.drain() == b"later"


async def test_a_source_pauses_while_the_guest_does_not_read() -> None:
    """Input beyond INPUT_BACKLOG stays in the pipe, not in emud's memory."""
    rig = Rig()
    read_fd, write_fd = os.pipe()
    data = random.Random(1).randbytes(4 * INPUT_BACKLOG)
    writer = threading.Thread(target=lambda: (os.write(write_fd, data), os.close(write_fd)))
    writer.start()
    rig.backend.input_fd = read_fd
    try:
        await rig.backend.start(lambda: None)
        async with asyncio.timeout(TIMEOUT):
            while rig.backend.pending_input < INPUT_BACKLOG:
                await asyncio.sleep(0)
            for _ in range(50):  # the pipe is full (the writer waits): nothing more is read
                await asyncio.sleep(0)
        assert INPUT_BACKLOG <= rig.backend.pending_input < INPUT_BACKLOG + 4096
        assert writer.is_alive()
        assert await rig.enable_and_receive(len(data)) == data  # all of it, in order
    finally:
        rig.backend.close()
        os.close(read_fd)
        writer.join(TIMEOUT)


async def test_a_file_is_there_before_the_first_instruction(tmp_path: Path) -> None:
    """Input from a regular file does not wait for the event loop to run its reader."""
    data = random.Random(2).randbytes(INPUT_BACKLOG + 10_000)
    (tmp_path / "in").write_bytes(data)
    rig = Rig()
    with open(tmp_path / "in", "rb") as file:
        rig.backend.input_fd = file.fileno()
        await rig.backend.start(lambda: None)
        try:
            assert rig.backend.pending_input == INPUT_BACKLOG  # the rest stays in the file
            assert await rig.enable_and_receive(len(data)) == data
        finally:
            rig.backend.close()


# --- the board: delivery depends on the guest only ---------------------------------


def test_input_given_before_boot_is_echoed_completely() -> None:
    m = emud.Machine(ECHO)
    m.uart.write(LINE + b"q")
    assert m.run(max_instructions=2_000_000).exit_code == 0
    assert m.uart.read() == echo_of(LINE + b"q")


def run_sliced(slices: list[int], data: bytes) -> tuple[str, migration.SnapshotData]:
    """uart_echo with `data` fed at its first WFI, run in slices of the given sizes."""
    machine = boot(ECHO)
    assert machine.run_until_poweroff(max_insns=200_000) is None  # asleep, waiting
    machine.serial.feed(data)
    for limit in slices:
        if machine.run_slice(limit) is RunState.POWEROFF:
            break
    else:
        raise AssertionError("the guest did not finish")
    return serial_text(machine), migration.capture(machine)


def test_slicing_does_not_change_when_input_arrives() -> None:
    data = LINE * 3 + b"q"
    reference = run_sliced([20_000] * 100, data)
    assert reference[0].encode() == echo_of(data)
    rng = random.Random(14)
    for slices in ([1] * 200_000, [7, 13] * 20_000, [rng.randint(1, 400) for _ in range(5000)]):
        assert run_sliced(slices, data) == reference


def test_ringbuf_input_reaches_a_guest_with_its_fifo_full() -> None:
    m = emud.Machine(ECHO)
    assert m.run(max_instructions=200_000).reason == "idle"
    m.uart.write(LINE)
    m.uart.write(LINE + b"q")  # a second write while the first still waits
    assert m.run(max_instructions=2_000_000).exit_code == 0
    assert m.uart.read() == echo_of(LINE * 2 + b"q")


def test_input_held_across_a_load_enters_the_loaded_fifo_with_its_interrupt() -> None:
    m = emud.Machine(ECHO)
    assert m.run(max_instructions=200_000).reason == "idle"  # ready, FIFO empty
    snap = m.save()
    m.write_u32(0x1000_0030, 0)  # CR = 0: the receiver is off, input is held
    m.uart.write(b"held\nq")
    assert m.uart.backend.pending_input == 6
    m.load(snap)  # receiver on again: in it goes, interrupt and all
    assert m.uart.backend.pending_input == 0
    assert m.core.device("plic").inputs[10].level  # type: ignore[attr-defined]
    assert m.run(max_instructions=200_000).exit_code == 0
    assert m.uart.read().endswith(b"held\n\necho: 6 bytes\n")


# --- the real CLI: a file, a pipe, a socket, QMP ---------------------------------


def test_stdin_from_a_file(tmp_path: Path) -> None:
    data = LINE + b"q"
    (tmp_path / "in.txt").write_bytes(data)
    with open(tmp_path / "in.txt", "rb") as stdin:
        result = subprocess.run([*EMUD, str(ECHO), "-serial", "stdio"], stdin=stdin,
                                capture_output=True, cwd=ROOT, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == echo_of(data)


def test_stdin_from_a_pipe() -> None:
    data = LINE * 4 + b"q"
    result = subprocess.run([*EMUD, str(ECHO), "-serial", "stdio"], input=data,
                            capture_output=True, cwd=ROOT, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == echo_of(data)


@contextlib.asynccontextmanager
async def daemon(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict[str, str]]]:
    proc = await asyncio.create_subprocess_exec(
        *EMUD, str(ECHO), *args, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        banner: dict[str, str] = {}
        assert proc.stderr is not None
        for _ in range(sum(a == "--qmp" or a.endswith(",server") for a in args)):
            line = (await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)).decode()
            match = re.match(r"emud: (\S+).* listening on (\S+)", line)
            assert match, line
            banner[match.group(1)] = match.group(2)
        yield proc, banner
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_socket_burst_is_echoed_at_once(tmp_path: Path) -> None:
    sock = tmp_path / "serial.sock"
    async with daemon("-serial", f"unix:{sock},server") as (proc, _):
        reader, writer = await asyncio.open_unix_connection(str(sock))
        burst = LINE * 2
        writer.write(burst)  # one write, far more than the FIFO holds
        echoed = b""
        async with asyncio.timeout(TIMEOUT):
            while not echoed.endswith(burst):
                echoed += await reader.read(4096)
        writer.write(b"q")
        async with asyncio.timeout(TIMEOUT):
            while not echoed.endswith(b" bytes\n"):
                echoed += await reader.read(4096)
        assert echoed.endswith(burst + b"\necho: %d bytes\n" % (len(burst) + 1))
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        writer.close()


async def qmp_run(slicing: str, data: bytes, tmp_path: Path) -> tuple[str, object, object]:
    """Input written while paused at entry; run by `cont` or by repeated `run-for`."""
    sock = str(tmp_path / f"{slicing.replace(' ', '-')}.sock")
    async with daemon("-S", "--qmp", f"unix:{sock}", "-serial", "ringbuf") as (proc, _):
        qmp = QMPClient("serial-test")
        await asyncio.wait_for(qmp.connect(sock), TIMEOUT)
        try:
            await qmp.execute("ringbuf-write", {"device": "serial0", "data": data.decode()})
            hmp = {"command-line": slicing}
            with qmp.listen(listener := EventListener("SHUTDOWN")):
                if slicing == "cont":
                    await qmp.execute("cont")
                else:
                    while (await qmp.execute("query-status"))["status"] != "shutdown":
                        await asyncio.wait_for(qmp.execute("human-monitor-command", hmp),
                                               TIMEOUT)
                await asyncio.wait_for(listener.get(), TIMEOUT)
            out = await qmp.execute("ringbuf-read", {"device": "serial0", "size": 1 << 16})
            registers = await qmp.execute("x-emud-query-registers")
            clock = await qmp.execute("x-emud-query-clock")
            return str(out), registers, clock
        finally:
            await qmp.disconnect()


async def test_run_for_slices_and_cont_give_the_same_run(tmp_path: Path) -> None:
    data = LINE * 2 + b"q"
    by_cont = await qmp_run("cont", data, tmp_path)
    assert by_cont[0].encode() == echo_of(data)
    assert await qmp_run("run-for 50ns", data, tmp_path) == by_cont
