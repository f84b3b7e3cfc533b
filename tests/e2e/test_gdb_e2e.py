"""The real gdb-multiarch against `emud run --gdb`, driven over GDB/MI (pygdbmi's parser)."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pygdbmi.gdbmiparser import parse_response

from conftest import IMAGES, ROOT
from emud.machine import UART0_BASE
from gdbstub.codec import frame

COUNTER = IMAGES / "counter.elf"
TIMEOUT = 30  # a failure guard only


class GdbError(Exception):
    pass


class Gdb:
    """gdb-multiarch in MI mode as an asyncio subprocess."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.records: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.stops: list[dict[str, Any]] = []
        self.token = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, elf: Path) -> Gdb:
        proc = await asyncio.create_subprocess_exec(
            "gdb-multiarch", "--interpreter=mi3", "-q", "-nx",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        gdb = cls(proc)
        await gdb.cmd("-gdb-set confirm off")
        await gdb.cmd("-gdb-set pagination off")
        await gdb.cmd("-gdb-set mi-async on")  # commands (-exec-interrupt) while the guest runs
        await gdb.cmd(f"-file-exec-and-symbols {elf}")
        return gdb

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\r\n")
            if text.strip() and text.strip() != "(gdb)":
                await self.records.put(parse_response(text))

    async def _next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.records.get(), TIMEOUT)

    async def cmd(self, command: str) -> tuple[dict[str, Any], str]:
        """Run one MI command; returns the result payload and the console/target output."""
        self.token += 1
        token = self.token
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{token}{command}\n".encode())
        await self.proc.stdin.drain()
        output = []
        while True:
            rec = await self._next()
            if rec["type"] in ("console", "target"):
                output.append(rec["payload"])
            elif rec["type"] == "notify" and rec["message"] == "stopped":
                self.stops.append(rec["payload"])
            elif rec["type"] == "result" and rec["token"] == token:
                if rec["message"] == "error":
                    raise GdbError(rec["payload"]["msg"])
                return rec["payload"] or {}, "".join(output)

    async def console(self, command: str) -> str:
        return (await self.cmd(f'-interpreter-exec console "{command}"'))[1]

    async def value(self, expression: str) -> str:
        payload, _ = await self.cmd(f'-data-evaluate-expression "{expression}"')
        return str(payload["value"])

    async def stopped(self) -> dict[str, Any]:
        while not self.stops:
            rec = await self._next()
            if rec["type"] == "notify" and rec["message"] == "stopped":
                return dict(rec["payload"])
        return self.stops.pop(0)

    async def resume(self, command: str = "-exec-continue") -> dict[str, Any]:
        await self.cmd(command)
        return await self.stopped()

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        self._reader.cancel()


class Emud:
    """`emud run IMAGE -S --gdb tcp:127.0.0.1:0`; learns the port from its log line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, serial: Path) -> None:
        self.proc = proc
        self.port = port
        self.serial = serial
        self.log: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, image: Path, serial: Path, *extra: str) -> Emud:
        """`extra`: more `emud run` options."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "emud", "run", str(image), "-S", "--gdb", "tcp:127.0.0.1:0",
            "-serial", f"file:{serial}", *extra, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
        match = re.search(rb"listening on tcp:127\.0\.0\.1:(\d+)", line)
        assert match, line
        return cls(proc, int(match.group(1)), serial)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))

    async def wait_dots(self, more_than: int) -> int:
        """Wait until the guest has printed more than `more_than` dots (1 per 1000 bumps)."""
        async def poll() -> int:
            while (dots := self.serial.read_text().count(".")) <= more_than:
                await asyncio.sleep(0.01)
            return dots

        return await asyncio.wait_for(poll(), TIMEOUT)

    async def wait_log(self, text: str) -> None:
        async def poll() -> None:
            while not any(text in line for line in self.log):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), TIMEOUT)

    async def attach(self, gdb: Gdb) -> None:
        await gdb.cmd(f"-target-select remote 127.0.0.1:{self.port}")
        await gdb.stopped()  # the stop gdb reports on connecting

    async def stop(self) -> None:
        """The daemon must still be alive; SIGTERM then ends it cleanly."""
        assert self.proc.returncode is None, "the daemon died: " + "".join(self.log)
        self.proc.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        await self._reader
        assert status >= 0, "killed by the signal instead of quitting"
        assert "Traceback" not in "".join(self.log), self.log


@pytest.fixture(name="emud")  # other gdb test modules import the two fixtures
async def emud_fixture(tmp_path: Path) -> AsyncIterator[Emud]:
    daemon = await Emud.start(COUNTER, tmp_path / "uart.txt")
    yield daemon
    await daemon.stop()


@pytest.fixture(name="gdb")
async def gdb_fixture() -> AsyncIterator[Gdb]:
    client = await Gdb.start(COUNTER)
    yield client
    await client.close()


def symbol(name: str) -> int:
    from emud.loader import load_elf

    return load_elf(COUNTER).symbols[name]


async def test_break_step_registers_memory(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    assert await gdb.value("$pc") == "0x80000000 <_start>"
    await gdb.cmd("-break-insert bump")
    stop = await gdb.resume()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "bump"
    assert int(stop["frame"]["addr"], 16) == symbol("bump")
    assert await gdb.value("counter") == "0"

    stop = await gdb.resume("-exec-step-instruction")
    assert stop["reason"] == "end-stepping-range"
    assert symbol("bump") < int(await gdb.value("(unsigned)$pc")) <= symbol("bump") + 4
    stop = await gdb.resume("-exec-finish")
    assert stop["reason"] == "function-finished" and stop["frame"]["func"] == "main"
    assert await gdb.value("counter") == "1"
    stop = await gdb.resume("-exec-next")
    assert stop["reason"] == "end-stepping-range"

    await gdb.cmd('-data-evaluate-expression "$a5 = 0x1234"')
    assert await gdb.value("$a5") == "4660"
    assert await gdb.value("$mstatus") != ""
    await gdb.cmd(f'-data-write-memory-bytes {symbol("counter"):#x} "2a000000"')
    assert await gdb.value("counter") == "42"
    payload, _ = await gdb.cmd(f"-data-read-memory-bytes {symbol('counter'):#x} 4")
    assert payload["memory"][0]["contents"] == "2a000000"
    stop = await gdb.resume()
    assert stop["reason"] == "breakpoint-hit"
    assert await gdb.value("counter") == "42"  # the guest kept the value gdb wrote


async def test_watchpoints_on_a_variable_and_on_pl011_registers(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    # uart_init writes CR (0x300 at reset -> UARTEN|TXE|RXE): a write watchpoint on MMIO.
    await gdb.cmd(f'-break-watch "*(volatile unsigned int *){UART0_BASE + 0x30:#x}"')
    stop = await gdb.resume()
    assert stop["reason"] == "watchpoint-trigger" and stop["frame"]["func"] == "uart_init"
    assert stop["value"] == {"old": "768", "new": "769"}
    await gdb.cmd("-break-delete")
    # Every character goes through DR; reads of DR by gdb do not pop the FIFO.
    await gdb.cmd(f'-break-watch -a "*(volatile unsigned char *){UART0_BASE:#x}"')
    stop = await gdb.resume()
    assert stop["reason"] == "access-watchpoint-trigger"
    assert stop["frame"]["func"] == "uart_putc"
    assert await gdb.value("counter") == "1000"
    await gdb.cmd("-break-delete")
    await gdb.cmd("-break-watch counter")
    stop = await gdb.resume()
    assert stop["reason"] == "watchpoint-trigger" and stop["frame"]["func"] == "bump"
    assert stop["value"] == {"old": "1000", "new": "1001"}
    stop = await gdb.resume()
    assert stop["value"] == {"old": "1001", "new": "1002"}


async def test_ctrl_c_monitor_detach_reattach_kill(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    await gdb.cmd("-exec-continue")
    await emud.wait_dots(0)  # the guest is running
    await gdb.cmd("-exec-interrupt")
    stop = await gdb.stopped()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT"
    first = int(await gdb.value("counter"))
    assert first >= 1000

    assert "pl011" in await gdb.console("monitor info mtree")

    await gdb.cmd("-target-detach")  # the guest runs on without a debugger
    await emud.wait_dots(first // 1000)
    other = await Gdb.start(COUNTER)
    try:
        await emud.attach(other)
        assert int(await other.value("counter")) > first
        await other.console("kill")  # resets the guest, the daemon stays
    finally:
        await other.close()
    await emud.attach(gdb)
    assert await gdb.value("$pc") == "0x80000000 <_start>"
    assert await gdb.value("counter") == "0"


async def test_ctrl_c_stops_long_single_stepping(emud: Emud, gdb: Gdb) -> None:
    """gdb's step loops answer every step at once: Ctrl-C lands between two steps."""
    await emud.attach(gdb)
    await gdb.cmd("-exec-step-instruction 1000000")
    await gdb.cmd("-exec-interrupt")
    stop = await gdb.stopped()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT"
    stop = await gdb.resume("-exec-step-instruction")  # exactly one stop: none left over
    assert stop["reason"] == "end-stepping-range"

    # `next 1000000` in the loop: single steps, and continues over the calls of bump.
    await gdb.cmd("-break-insert -t counter.c:23")
    await gdb.resume()
    await gdb.cmd("-exec-next 1000000")
    await gdb.cmd("-exec-interrupt")
    stop = await gdb.stopped()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT"
    stop = await gdb.resume("-exec-step-instruction")
    assert stop["reason"] == "end-stepping-range"


async def test_sigterm_ends_the_daemon_while_gdb_steps(tmp_path: Path, gdb: Gdb) -> None:
    daemon = await Emud.start(COUNTER, tmp_path / "uart.txt")
    try:
        await daemon.attach(gdb)
        await gdb.cmd("-exec-step-instruction 1000000")
        await daemon.wait_log("debugger attached")
        await gdb.console("echo")  # gdb is busy stepping: MI still answers in async mode
    finally:
        await daemon.stop()  # SIGTERM: exits by itself, no traceback
    assert daemon.proc.returncode == 0
    assert any("debugger detached" in line for line in daemon.log)
    while True:  # gdb learns that the remote went away (and stops stepping)
        rec = await gdb._next()
        if rec["type"] == "notify" and rec["message"] == "thread-group-exited":
            break


async def test_address_registers_reach_memory(emud: Emud, gdb: Gdb) -> None:
    """gdb sign-extends 32-bit values: addresses above 2 GiB must still be readable."""
    await emud.attach(gdb)
    await gdb.cmd("-break-insert bump")
    await gdb.resume()
    await gdb.console(f"set $mepc = {symbol('main'):#x}")
    await gdb.console(f"set $mtvec = {symbol('bump'):#x}")
    assert re.search(r"0x80000[0-9a-f]+ <main>:\s+add\s+sp,sp,-16", await gdb.console("x/i $mepc"))
    assert re.match(r"main in section \.text", await gdb.console("info symbol $mepc"))
    assert "<bump>" in await gdb.console("x/i $mtvec")
    assert await gdb.value("$mepc") == f"{symbol('main'):#x} <main>"
    sp = int(await gdb.value("(unsigned)$sp"))
    words = await gdb.console("x/4x $sp")
    assert words.startswith(f"{sp:#x}:") and len(re.findall(r"\t0x[0-9a-f]{8}", words)) == 4
    # Registers without a pointer type still reach memory (through the sign-extended map).
    await gdb.console(f"set $a0 = {symbol('counter'):#x}")
    await gdb.console("set var counter = 0x1234abcd")
    assert "0x1234abcd" in await gdb.console("x/x $a0")


@pytest.mark.parametrize("cwd,elf", [(ROOT, "images/counter.elf"), (IMAGES, "counter.elf")])
def test_gdb_finds_the_sources(cwd: Path, elf: str) -> None:
    """As the README starts gdb (from the repository root), and from inside images/."""
    out = subprocess.run(["gdb-multiarch", "-q", "-nx", "-batch", "-ex", "list bump", elf],
                         cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert "static void bump(void)" in out.stdout, out.stdout + out.stderr
    assert "No such file" not in out.stdout + out.stderr


async def test_guest_power_off_is_reported_as_exit(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    await gdb.cmd("-break-insert -t main")  # after crt0 has cleared .bss
    await gdb.resume()
    await gdb.cmd('-data-evaluate-expression "limit = 42"')
    stop = await gdb.resume()
    assert stop == {"reason": "exited", "exit-code": "052"}  # gdb prints it in octal
    assert emud.proc.returncode is None  # power-off did not end the daemon
    # A new gdb can inspect the powered-off machine, reset it and start over.
    await emud.attach(gdb)
    assert await gdb.value("counter") == "42"
    await gdb.console("monitor system_reset")
    await gdb.console("maintenance flush register-cache")
    assert await gdb.value("$pc") == "0x80000000 <_start>"
    assert await gdb.value("counter") == "0"


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_some(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), TIMEOUT)


async def test_bad_input_never_kills_the_daemon(emud: Emud, gdb: Gdb) -> None:
    reader, writer = await _raw(emud.port)
    # A second client is refused while one is attached.
    second_reader, second_writer = await _raw(emud.port)
    assert await asyncio.wait_for(second_reader.read(), TIMEOUT) == b""
    second_writer.close()

    writer.write(b"noise\x00\xff$g#00")  # line noise, then a bad checksum
    assert await _read_some(reader, 1) == b"-"
    writer.write(b"$" + b"M80000000,10000:" + b"00" * 0x10000 + b"#00")  # oversized
    assert await _read_some(reader, 1) == b"-"
    writer.write(b"$mzz#%02x" % (sum(b"mzz") & 0xFF))  # malformed arguments
    assert await _read_some(reader, 8) == b"+" + frame(b"E22")
    writer.write(b"$Z0,80000000,4#")  # cut off in the middle of a packet
    writer.close()
    await emud.wait_log("debugger detached")

    await emud.attach(gdb)  # the next gdb is served normally
    assert int(await gdb.value("counter")) >= 0
