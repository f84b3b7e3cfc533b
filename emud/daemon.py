"""Wires a machine and its I/O into one asyncio event loop (one thread, no locks).

The CPU runs in slices; between slices the loop serves file descriptors.
Control planes (gdb, QMP) attach here as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator

from emud.chardev import StdioBackend
from emud.machine import Machine, RunState


class Daemon:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.wake = asyncio.Event()  # set by any input that may end an idle wait

    def _on_stdin(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            return
        self.machine.serial.feed(data)
        self.wake.set()

    async def run(self) -> int:
        """Run the guest until it powers off; returns its exit code."""
        machine = self.machine
        loop = asyncio.get_running_loop()
        reading_stdin = isinstance(machine.serial, StdioBackend) and _has_fd(sys.stdin)
        if reading_stdin:
            try:
                loop.add_reader(sys.stdin.fileno(), self._on_stdin)
            except PermissionError:  # a regular file (`< input`): epoll refuses it, read it now
                reading_stdin = False
                machine.serial.feed(sys.stdin.buffer.read())
        try:
            while True:
                state = machine.run_slice()
                if state is RunState.POWEROFF:
                    assert machine.exit_code is not None
                    return machine.exit_code
                if state is RunState.IDLE:
                    self.wake.clear()
                    await self.wake.wait()
                else:
                    await asyncio.sleep(0)
        finally:
            if reading_stdin:
                loop.remove_reader(sys.stdin.fileno())


def _has_fd(stream: object) -> bool:
    try:
        os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def terminal_cbreak() -> Iterator[None]:
    """Character-at-a-time input without echo on a terminal; Ctrl-C still interrupts."""
    fd = sys.stdin.fileno() if sys.stdin else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
