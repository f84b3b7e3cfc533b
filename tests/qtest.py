"""A small client for QEMU's qtest protocol (docs/qtest.md, Part B).

QEMU runs with `-qtest stdio`: requests are written to its stdin, replies and
asynchronous `IRQ raise N` / `IRQ lower N` lines come back on its stdout.  A QMP
socket sits next to it for what qtest cannot do (QOM lookups, system_reset,
migration dumps).  The machine is started with `accel=qtest:tcg`: the qtest
accelerator where it exists, TCG on Debian's build, which lacks it (B1) -- so
by default the VM is also started paused (`-S`), which freezes QEMU_CLOCK_VIRTUAL
at 0 there (B5).  Every QEMU started here is killed at `close()`.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import socket
import subprocess
import tempfile
import termios
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPLY_TIMEOUT = 30.0  # seconds; QEMU answers in microseconds unless it hangs
# The first answer waits for QEMU to start: on a fresh machine (cold page cache, busy
# disk) that has taken over 10 s.
START_TIMEOUT = 120.0


class QTestError(Exception):
    """QEMU answered FAIL/ERR, died, or stopped answering."""


class QTest:
    """One QEMU process under -qtest.  Use as a context manager."""

    def __init__(self, binary: str, machine: str, extra: Sequence[str] = (),
                 paused: bool = True, serial: bool = False, telnet: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="emud-qtest-"))
        self.qmp_path = self.dir / "qmp.sock"
        self.serial_path = self.dir / "serial.sock"
        self.stderr_path = self.dir / "stderr"
        self.irq_events: list[tuple[str, int]] = []
        self.qmp_events: list[str] = []
        args = [binary, "-machine", f"{machine},accel=qtest:tcg", "-nodefaults",
                "-display", "none", "-qtest", "stdio", "-qtest-log", "/dev/null",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                *(["-S"] if paused else []), *extra]
        if serial:
            args += ["-chardev", f"socket,id=serial0,path={self.serial_path},server=on,"
                     f"wait=off,telnet={'on' if telnet else 'off'}", "-serial", "chardev:serial0"]
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=stderr)
        self._buffer = b""
        self._timeout = START_TIMEOUT
        self._qmp: Any = None
        self._qmp_sock: socket.socket | None = None
        self._serial: socket.socket | None = None
        try:
            self.endianness = self.cmd("endianness")  # first answer: QEMU is up
            self._timeout = REPLY_TIMEOUT
            if serial:
                self._connect_serial(telnet)
        except BaseException:
            self.close()
            raise

    # --- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        for sock in (self._qmp_sock, self._serial):
            if sock is not None:
                sock.close()
        self._qmp_sock = self._serial = None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()

    def __enter__(self) -> QTest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # --- the qtest channel ----------------------------------------------------------

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self._timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise QTestError("QEMU stopped answering")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise QTestError(f"QEMU exited: {self.stderr()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _collect_event(self, line: str) -> bool:
        words = line.split()
        if len(words) == 3 and words[0] == "IRQ" and words[1] in ("raise", "lower"):
            self.irq_events.append((words[1], int(words[2])))
            return True
        return False

    def cmd(self, line: str) -> str:
        """Send one request; return what follows `OK` (IRQ lines are collected)."""
        assert self.proc.stdin is not None
        if "  " in line or "\n" in line or "\r" in line:
            raise ValueError(f"malformed qtest request {line!r}")
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            reply = self._readline()
            if not self._collect_event(reply):
                break
        if reply == "OK" or reply.startswith("OK "):
            return reply[3:]
        raise QTestError(f"{line!r}: {reply}")

    def take_events(self) -> list[tuple[str, int]]:
        """The IRQ notifications seen so far, emptying the list."""
        events, self.irq_events = self.irq_events, []
        return events

    # --- memory ------------------------------------------------------------------------

    def readb(self, addr: int) -> int:
        return int(self.cmd(f"readb {addr:#x}"), 16)

    def readw(self, addr: int) -> int:
        return int(self.cmd(f"readw {addr:#x}"), 16)

    def readl(self, addr: int) -> int:
        return int(self.cmd(f"readl {addr:#x}"), 16)

    def readq(self, addr: int) -> int:
        return int(self.cmd(f"readq {addr:#x}"), 16)

    def writeb(self, addr: int, value: int) -> None:
        self.cmd(f"writeb {addr:#x} {value:#x}")

    def writew(self, addr: int, value: int) -> None:
        self.cmd(f"writew {addr:#x} {value:#x}")

    def writel(self, addr: int, value: int) -> None:
        self.cmd(f"writel {addr:#x} {value:#x}")

    def writeq(self, addr: int, value: int) -> None:
        self.cmd(f"writeq {addr:#x} {value:#x}")

    def read_sized(self, addr: int, size: int) -> int:
        """readb/readw/readl/readq by access size in bytes."""
        return int(self.cmd(f"read{SIZE_SUFFIX[size]} {addr:#x}"), 16)

    def write_sized(self, addr: int, value: int, size: int) -> None:
        self.cmd(f"write{SIZE_SUFFIX[size]} {addr:#x} {value:#x}")

    def read(self, addr: int, size: int) -> bytes:
        return bytes.fromhex(self.cmd(f"read {addr:#x} {size}")[2:])

    def write(self, addr: int, data: bytes) -> None:
        self.cmd(f"write {addr:#x} {len(data)} 0x{data.hex()}")

    # --- interrupts ---------------------------------------------------------------------

    def irq_intercept_in(self, path: str) -> None:
        self.cmd(f"irq_intercept_in {path}")

    def irq_intercept_out(self, path: str) -> None:
        self.cmd(f"irq_intercept_out {path}")

    def set_irq_in(self, path: str, name: str, num: int, level: int) -> None:
        self.cmd(f"set_irq_in {path} {name} {num} {level}")

    # --- the serial line (-serial on a socket chardev, B5) -------------------------------

    def _connect_serial(self, telnet: bool) -> None:
        self._serial = socket.socket(socket.AF_UNIX)
        self._serial.connect(str(self.serial_path))
        self._serial.setblocking(False)
        # QEMU accepts in its main loop; bytes written before that would be dropped.
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            chardev = next(c for c in self.qmp("query-chardev") if c["label"] == "serial0")
            if not chardev["filename"].startswith("disconnected"):
                break
            if time.monotonic() > deadline:
                raise QTestError("QEMU did not accept the serial connection")
            time.sleep(0.002)
        if telnet:  # QEMU opens with its option negotiation; the last is IAC DO BINARY
            greeting = b""
            while not greeting.endswith(TELNET_DO_BINARY):
                if time.monotonic() > deadline:
                    raise QTestError(f"no telnet negotiation from QEMU: {greeting!r}")
                greeting += self.serial_recv()
                time.sleep(0.001)

    def serial_break(self) -> None:
        """A break condition on the RX line (telnet IAC BRK; needs `telnet=True`)."""
        self.serial_send(TELNET_BREAK)

    def serial_send(self, data: bytes, wait: bool = True) -> None:
        """Bytes arrive on the UART's RX line; with `wait`, return once QEMU has read them."""
        assert self._serial is not None
        for byte in data:  # one skb per byte, so SIOCOUTQ drains byte by byte
            self._serial.send(bytes([byte]))
        if wait:
            self.serial_wait_consumed()

    def serial_unread(self) -> int:
        """Bytes sent to QEMU that it has not read yet (SIOCOUTQ on the Unix socket)."""
        assert self._serial is not None
        count = array.array("i", [0])
        fcntl.ioctl(self._serial.fileno(), termios.TIOCOUTQ, count)
        return count[0]

    def serial_wait_consumed(self) -> None:
        """Wait until QEMU has read everything sent; its UART handled each byte as it read it."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while self.serial_unread():
            if time.monotonic() > deadline:
                raise QTestError("QEMU did not take the serial input")
            time.sleep(0.0005)
        self.cmd("endianness")  # collect the IRQ lines printed while it took them

    def serial_recv(self) -> bytes:
        """What the UART has transmitted so far (QEMU writes it before answering)."""
        assert self._serial is not None
        out = b""
        while True:
            try:
                chunk = self._serial.recv(4096)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    # --- QMP ----------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its "return" value (events are skipped)."""
        if self._qmp is None:
            self._qmp_sock = socket.socket(socket.AF_UNIX)
            self._qmp_sock.settimeout(REPLY_TIMEOUT)
            self._qmp_sock.connect(str(self.qmp_path))
            self._qmp = self._qmp_sock.makefile("rw")
            json.loads(self._qmp.readline())  # greeting
            self.qmp("qmp_capabilities")
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._qmp.write(json.dumps(request) + "\n")
        self._qmp.flush()
        while True:
            reply = json.loads(self._qmp.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QTestError(f"QMP {command}: {reply['error']}")
            self.qmp_events.append(reply["event"])

    def system_reset(self) -> None:
        """A machine reset, finished when QEMU announces it (it runs in the main loop)."""
        self.qmp("system_reset")
        while "RESET" not in self.qmp_events:
            reply = json.loads(self._qmp.readline())
            if "event" in reply:
                self.qmp_events.append(reply["event"])
        self.qmp_events.clear()
        self.cmd("endianness")  # collect the IRQ lines the reset printed

    def find_device(self, qom_type: str) -> str:
        """QOM path of the single device of this type under /machine/unattached."""
        children = self.qmp("qom-list", path="/machine/unattached")
        paths = [f"/machine/unattached/{child['name']}" for child in children
                 if child["type"] == f"child<{qom_type}>"]
        if len(paths) != 1:
            raise QTestError(f"expected one {qom_type}, found {paths}")
        return paths[0]

    def migrate_to_bytes(self) -> bytes:
        """The whole migration stream (the VM may stay paused), read back from a file."""
        path = self.dir / "migration"
        self.qmp("migrate", uri=f"exec:cat > {path}")
        deadline = time.monotonic() + REPLY_TIMEOUT
        while (status := self.qmp("query-migrate").get("status")) != "completed":
            if status == "failed" or time.monotonic() > deadline:
                raise QTestError(f"migration {status}")
            time.sleep(0.005)
        return path.read_bytes()


SIZE_SUFFIX = {1: "b", 2: "w", 4: "l", 8: "q"}
TELNET_BREAK = b"\xff\xf3"  # IAC BRK
TELNET_DO_BINARY = b"\xff\xfd\x00"  # IAC DO BINARY


def stream_description(stream: bytes) -> Any:
    """The trailing vmdesc JSON of a migration stream, found as analyze-migration does (A6)."""
    brace = stream.index(b"{", stream.rindex(b"\x00"))
    if stream[brace - 5] != 0x06:
        raise QTestError("no vmdesc at the end of the migration stream")
    length = int.from_bytes(stream[brace - 4:brace], "big")
    return json.loads(stream[brace:brace + length])


def _described_size(entry: Any) -> int:
    """Payload bytes of a vmdesc device/subsection entry: fields, then subsections."""
    size: int = sum(f["size"] * f.get("array_len", 1) for f in entry["fields"])
    for sub in entry.get("subsections", ()):
        size += 1 + 1 + len(sub["vmsd_name"]) + 4 + _described_size(sub)
    return size


def device_sections(stream: bytes) -> dict[str, bytes]:
    """Payload of every device section (idstr -> bytes), located via the vmdesc JSON.

    Only the first instance of each idstr; the header and footer are checked."""
    sections = {}
    for device in stream_description(stream)["devices"]:
        if device["instance_id"] != 0 or "vmsd_name" not in device:
            continue
        name = device["name"].encode()
        tail = bytes([len(name)]) + name + (0).to_bytes(4, "big") + (
            device["version"].to_bytes(4, "big"))
        start = stream.index(tail)
        if stream[start - 5] != 0x04:
            raise QTestError(f"section {device['name']} is not a full section")
        section_id = stream[start - 4:start]
        payload_at = start + len(tail)
        end = payload_at + _described_size(device)
        if stream[end:end + 5] != b"\x7e" + section_id:
            raise QTestError(f"section {device['name']}: no footer where the vmdesc says")
        sections[device["name"]] = stream[payload_at:end]
    return sections
