"""Wires a machine and its I/O into one asyncio event loop (one thread, no locks).

The CPU runs in slices; between slices the loop serves sockets and file
descriptors.  Run control (stop, cont, step, reset, quit) lives here, so the
monitor, QMP and the gdb stub all drive the machine the same way, and every
change of run state is announced to the listeners as a QMP-style event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from emud.machine import Machine, RunState

if TYPE_CHECKING:
    from emud.monitor import SnapshotHook

# A listener gets (event name, data), e.g. ("STOP", {}), ("SHUTDOWN", {"guest": True}).
Listener = Callable[[str, dict[str, Any]], None]


class Daemon:
    def __init__(self, machine: Machine, *, start_paused: bool = False,
                 exit_on_poweroff: bool = True) -> None:
        self.machine = machine
        self.running = not start_paused
        # Foreground `emud run` ends with the guest; a daemon with control planes stays up.
        self.exit_on_poweroff = exit_on_poweroff
        self.status = "prelaunch" if start_paused else "running"  # QMP's RunState name
        self.listeners: list[Listener] = []
        self.wake = asyncio.Event()  # set by anything that may end an idle or paused wait
        self.quit_requested = False
        self.quit_reason = ""
        # savevm/loadvm/delvm for every monitor door (QMP, shell, gdb); None = not available
        self.snapshots: SnapshotHook | None = None

    # --- events and run control ---------------------------------------------------

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        for listener in list(self.listeners):
            listener(event, data or {})

    def stop(self, status: str = "paused") -> None:
        """Pause the guest at the current slice boundary (QMP `stop`)."""
        if self.running:
            self.running = False
            self.status = status
            self.emit("STOP")
        self.wake.set()

    def cont(self) -> None:
        """Resume the guest (QMP `cont`). A powered-off guest stays off until reset."""
        if not self.running and self.machine.exit_code is None:
            self.running = True
            self.status = "running"
            self.emit("RESUME")
        self.wake.set()

    def system_reset(self) -> None:
        self.machine.reset()
        if self.status == "shutdown":
            self.status = "paused"
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        self.wake.set()

    def quit(self, reason: str = "host-qmp-quit") -> None:
        """End `run()`; it announces SHUTDOWN with `reason` (QMP's ShutdownCause) as it returns."""
        self.quit_requested = True
        self.quit_reason = reason
        self.wake.set()

    def step(self, count: int = 1) -> RunState:
        """Execute `count` instructions while paused (monitor `step`, gdb `s`)."""
        state = RunState.RUNNING
        for _ in range(count):
            state = self.machine.run_slice(1)
            if state is not RunState.RUNNING:
                break
        self._after_slice(state)
        return state

    def _after_slice(self, state: RunState) -> None:
        if state is RunState.DEBUG:
            self.stop("debug")  # QMP's RunState for a debugger stop
        elif state is RunState.POWEROFF and self.status != "shutdown":
            self.running = False
            self.status = "shutdown"
            self.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
            if self.exit_on_poweroff:
                self.quit_requested = True

    # --- the loop -----------------------------------------------------------------

    async def run(self) -> int:
        """Serve until quit; returns the guest's exit code (0 if it never powered off)."""
        machine = self.machine
        while not self.quit_requested:
            if not self.running:
                self.wake.clear()
                await self.wake.wait()
                continue
            state = machine.run_slice()
            self._after_slice(state)
            if state is RunState.IDLE:
                self.wake.clear()
                await self.wake.wait()
            else:
                await asyncio.sleep(0)
        if self.quit_reason:
            self.emit("SHUTDOWN", {"guest": False, "reason": self.quit_reason})
        return machine.exit_code or 0


class Detached:
    """`emud run --daemonize`: fork into the background once, like QEMU's -daemonize.

    The parent waits until the child calls `ready` (its sockets are listening)
    and exits 0 after printing the child's banner, or exits 1 with the child's
    error from `fail`, so `emud run … --daemonize && emud shell` never races.
    """

    def __init__(self) -> None:
        read_fd, self._fd = os.pipe()
        if os.fork():
            os.close(self._fd)
            with os.fdopen(read_fd, "rb") as pipe:
                report = pipe.read().decode(errors="replace")
            ok = report.startswith("+")
            sys.stderr.write(report[1:] if report else "emud: the daemon died while starting\n")
            os._exit(0 if ok else 1)
        os.close(read_fd)
        os.setsid()

    def _report(self, text: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, text.encode())
            os.close(self._fd)
            self._fd = -1

    def ready(self, banner: str) -> None:
        self._report("+" + banner + f"emud: daemon pid {os.getpid()}\n")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the terminal belongs to the user again
            os.dup2(devnull, fd)
        os.close(devnull)

    def fail(self, message: str) -> None:
        self._report("-" + message)


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
