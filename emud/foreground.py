"""The plain `emud run`: a guest and its serial ports, nothing to serve.

With no gdb, QMP, pause, daemon mode, recording or trace file there is nobody
to serve between slices except stdin, so the machine runs in this thread
without an event loop: asyncio and the daemon cost a short run more start-up
time than the run itself.  What the guest sees is what it sees under the daemon
(emud.daemon.Daemon.run): input is held by the backend until the UART takes it,
so it reaches the guest at the same instruction however it is read here; the
run ends at guest power-off with its exit code, or on SIGTERM with the code so
far (0 if it never powered off); an idle guest (WFI, no timer) waits for input.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from emud.chardev import StdioBackend
from emud.machine import RunState

if TYPE_CHECKING:
    from emud.machine import Machine

READ_SIZE = 4096


def run(machine: Machine) -> int:
    """Run until power-off or SIGTERM; returns the exit code (0 if none)."""
    sources = [port for port in machine.input_ports
               if isinstance(port, StdioBackend) and port.input_fd >= 0]
    for port in sources:
        if stat.S_ISREG(os.fstat(port.input_fd).st_mode):
            port.read_file_input()  # there from the first instruction on, as under the daemon
    with _sigterm() as wakeup:
        stopped = False  # a debug stop: nothing can resume the guest, wait for SIGTERM
        while not wakeup.quit:
            if stopped:
                _wait([], wakeup.fd)
                continue
            state = machine.run_slice()
            if state is RunState.POWEROFF:
                break
            stopped = state is RunState.DEBUG
            # The daemon lets its stdin readers run after every slice: read what is there,
            # or, for an idle guest, wait until there is some.
            sources = _feed(sources, wakeup.fd if state is RunState.IDLE else None)
    return machine.exit_code or 0


def _feed(sources: list[StdioBackend], block: int | None) -> list[StdioBackend]:
    """Hand what stdin has ready to its backends (unless their backlog is full); with
    `block` (the SIGTERM wake-up fd) wait for input first.  Returns the sources that
    have not reached end of file."""
    ready = [port for port in sources if port.has_input_room]
    if not ready and block is None:
        return sources
    for fd in _wait([port.input_fd for port in ready], block):
        port = next(p for p in ready if p.input_fd == fd)
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        if data:
            port.feed(data)
        else:  # end of file: that source is done, as the daemon's reader
            sources = [p for p in sources if p is not port]
    return sources


def _wait(fds: list[int], wakeup: int | None) -> list[int]:
    """The fds readable now, or (with `wakeup`) once one of them or `wakeup` is."""
    watched = [*fds, *([wakeup] if wakeup is not None else [])]
    readable, _, _ = select.select(watched, [], [], None if wakeup is not None else 0)
    if wakeup is not None and wakeup in readable:
        with contextlib.suppress(OSError):
            os.read(wakeup, READ_SIZE)
    return [fd for fd in readable if fd != wakeup]


class _Wakeup:
    """SIGTERM's flag and the pipe its arrival is written to (it ends a blocking wait)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.quit = False


@contextlib.contextmanager
def _sigterm() -> Iterator[_Wakeup]:
    """SIGTERM ends the run at the next slice boundary, as the daemon's handler does.
    Outside the main thread (where Python allows no handlers) only power-off ends it."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    wakeup = _Wakeup(read_fd)

    def handler(signum: int, frame: object) -> None:
        wakeup.quit = True

    try:
        old_handler = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        installed = False
    else:
        installed = True
        old_fd = signal.set_wakeup_fd(write_fd)
    try:
        yield wakeup
    finally:
        if installed:
            signal.set_wakeup_fd(old_fd)
            signal.signal(signal.SIGTERM, old_handler)
        os.close(read_fd)
        os.close(write_fd)


@contextlib.contextmanager
def terminal_cbreak() -> Iterator[None]:
    """Character-at-a-time input without echo on a terminal; Ctrl-C still interrupts."""
    fd = sys.stdin.fileno() if sys.stdin else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
