"""`emud run --qmp …` as a process: banner, serial over TCP, power-off does not end it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator

import pytest
from qemu.qmp import EventListener, QMPClient

from conftest import IMAGES, ROOT

TIMEOUT = 60.0  # a failure guard only: a first start on a fresh machine can be slow
EMUD = [sys.executable, "-m", "emud", "run"]


class Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.banner: dict[str, str] = {}

    async def read_banner(self, count: int) -> None:
        assert self.proc.stderr is not None
        for _ in range(count):
            line = (await asyncio.wait_for(self.proc.stderr.readline(), TIMEOUT)).decode()
            match = re.match(r"emud: (\S+).* listening on (\S+)", line)
            assert match, line
            self.banner[match.group(1)] = match.group(2)


@pytest.fixture
async def emud_tcp() -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        *EMUD, str(IMAGES / "uart_echo.elf"), "--qmp", "tcp:127.0.0.1:0",
        "-serial", "tcp:127.0.0.1:0,server", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    process = Process(proc)
    try:
        await process.read_banner(2)
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def tcp(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp:").removesuffix(",server").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def qmp_daemon(*args: str, banners: int = 1, env: dict[str, str] | None = None,
                     timeout: float = TIMEOUT) -> AsyncIterator[tuple[Process, QMPClient]]:
    """`emud run ARGS…` as a process with its banner read (`banners` lines) and a
    qemu.qmp client connected to the QMP address it printed; killed afterwards."""
    proc = await asyncio.create_subprocess_exec(
        *EMUD, *args, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    process = Process(proc)
    qmp = QMPClient("test")
    try:
        await process.read_banner(banners)
        address = process.banner["QMP"]
        await asyncio.wait_for(qmp.connect(tcp(address) if address.startswith("tcp:")
                                           else address.removeprefix("unix:")), timeout)
        yield process, qmp
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_serial_socket_and_qmp_quit(emud_tcp: Process) -> None:
    reader, writer = await asyncio.open_connection(*tcp(emud_tcp.banner["serial0"]))
    writer.write(b"ping")
    echoed = b""
    while len(echoed) < 4:
        echoed += await asyncio.wait_for(reader.read(16), TIMEOUT)
    assert echoed == b"ping"
    qmp = QMPClient("cli")
    await asyncio.wait_for(qmp.connect(tcp(emud_tcp.banner["QMP"])), TIMEOUT)
    with qmp.listen(listener := EventListener()):
        await qmp.execute("quit")
        event = await asyncio.wait_for(listener.get(), TIMEOUT)
    assert event["event"] == "SHUTDOWN" and event["data"]["reason"] == "host-qmp-quit"
    assert await asyncio.wait_for(emud_tcp.proc.wait(), TIMEOUT) == 0
    with contextlib.suppress(EOFError):  # qemu.qmp reports the server's goodbye as EOF
        await qmp.disconnect()
    writer.close()


async def test_guest_power_off_keeps_the_daemon() -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="emud-cli-"), "qmp.sock")
    proc = await asyncio.create_subprocess_exec(
        *EMUD, str(IMAGES / "hello.elf"), "--qmp", f"unix:{sock}", "-S", "-serial", "null",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await Process(proc).read_banner(1)
        qmp = QMPClient("cli")
        await asyncio.wait_for(qmp.connect(sock), TIMEOUT)
        with qmp.listen(listener := EventListener()):
            await qmp.execute("cont")
            names = [(await asyncio.wait_for(listener.get(), TIMEOUT))["event"] for _ in range(2)]
        assert names == ["RESUME", "SHUTDOWN"]
        assert await qmp.execute("query-status") == {"running": False, "status": "shutdown"}
        assert proc.returncode is None
        proc.terminate()  # SIGTERM: a clean stop
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
        assert not os.path.exists(sock)  # the socket is cleaned up
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("daemonize", [False, True])
def test_cannot_listen_is_a_clear_error(daemonize: bool) -> None:
    taken = tempfile.mkdtemp(prefix="emud-cli-")  # a directory where the socket should go
    result = subprocess.run(
        [*EMUD, str(IMAGES / "hello.elf"), "--qmp", f"unix:{taken}", "-serial", "null",
         *(["--daemonize"] if daemonize else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    assert result.stderr == (f"emud: --qmp: cannot listen on unix:{taken}: the path exists and "
                             "is not a socket (it is left alone)\n")  # one line, also detached
    assert os.path.isdir(taken)


def test_daemonize_refuses_stdio() -> None:
    result = subprocess.run([*EMUD, str(IMAGES / "hello.elf"), "--daemonize", "-serial", "stdio"],
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1 and "cannot use -serial stdio" in result.stderr


def test_a_second_daemon_does_not_steal_the_socket() -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="emud-cli-"), "qmp.sock")
    first = subprocess.run([*EMUD, str(IMAGES / "uart_echo.elf"), "--qmp", f"unix:{sock}",
                            "--daemonize"], cwd=ROOT, capture_output=True, text=True,
                           timeout=TIMEOUT)
    assert first.returncode == 0, first.stderr
    pid = int(re.findall(r"daemon pid (\d+)", first.stderr)[0])
    try:
        second = subprocess.run([*EMUD, str(IMAGES / "hello.elf"), "--qmp", f"unix:{sock}",
                                 "-serial", "null"], cwd=ROOT, capture_output=True, text=True,
                                timeout=TIMEOUT)
        assert second.returncode == 1 and "in use" in second.stderr
        assert os.path.exists(sock)
    finally:
        os.kill(pid, 15)


def test_qmp_shell_from_qemu_qmp_works_unmodified() -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="emud-cli-"), "qmp.sock")
    started = subprocess.run([*EMUD, str(IMAGES / "uart_echo.elf"), "--qmp", f"unix:{sock}",
                              "--daemonize", "-S"], cwd=ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert started.returncode == 0, started.stderr
    pid = int(re.findall(r"daemon pid (\d+)", started.stderr)[0])
    qmp_shell = [sys.executable, "-m", "qemu.qmp.qmp_shell"]
    try:
        hmp = subprocess.run([*qmp_shell, "-H", sock], input="info status\nxp/1wx 0x80000000\n",
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert "VM status: paused (prelaunch)" in hmp.stdout
        assert re.search(r"0000000080000000: 0x[0-9a-f]{8}", hmp.stdout)
        qmp = subprocess.run([*qmp_shell, sock], input="query-status\nstop\n",
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert '{"return": {"running": false, "status": "prelaunch"}}' in qmp.stdout
    finally:
        os.kill(pid, 15)
