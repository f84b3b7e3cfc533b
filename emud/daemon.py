"""Wires a machine and its I/O into one asyncio event loop (one thread, no locks).

The CPU runs in slices; between slices the loop serves sockets and file
descriptors.  Run control (stop, cont, step, reset, quit) lives here, so the
monitor, QMP and the gdb stub all drive the machine the same way, and every
change of run state is announced to the listeners as a QMP-style event.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from emud.machine import SLICE, Machine, RunState

if TYPE_CHECKING:
    from emud.monitor import SnapshotHook
    from emud.replay import Replay

# A listener gets (event name, data), e.g. ("STOP", {}), ("SHUTDOWN", {"guest": True}).
Listener = Callable[[str, dict[str, Any]], None]


class Job(Protocol):
    """Long work on a paused machine (a reverse-continue), done by the run loop one
    bounded slice at a time so the loop keeps serving every client."""

    def advance(self) -> bool:
        """One slice; True when the job has ended (it reported its own result)."""
        ...

    def cancel(self) -> None:
        """End it now, leaving the machine in a consistent state (and report that)."""
        ...


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
        # A monitor `step` in progress yields to the loop between slices; `stop`, `cont`
        # and quit end it there (see step_async).
        self.stepping = False
        self._step_cancelled = False
        self.run_for_targets: list[int] = []  # virtual ns each pending run-for stops at
        # savevm/loadvm/delvm for every monitor door (QMP, shell, gdb); None = not available
        self.snapshots: SnapshotHook | None = None
        # Record/replay (emud/replay): every slice goes through it; None = not recording
        self.replay: Replay | None = None
        self.job: Job | None = None  # runs before anything else the loop would do
        self._job_ended = asyncio.Event()

    def attach_replay(self, replay: Replay) -> None:
        self.replay = replay
        replay.on_end = replay.on_break = self.stop  # a played session's end, replay-break

    def _run_slice(self, limit: int = SLICE) -> RunState:
        replay = self.replay
        return replay.run_slice(limit) if replay is not None else self.machine.run_slice(limit)

    # --- jobs ---------------------------------------------------------------------

    def start_job(self, job: Job) -> asyncio.Event:
        """Run `job` from the loop; one at a time (a new one cancels the old).  The
        event returned is set when it has ended or was cancelled."""
        self.cancel_job()
        self.job = job
        self._job_ended = ended = asyncio.Event()
        self.wake.set()
        return ended

    async def run_job(self, job: Job) -> None:
        """Run `job` and wait until it has ended or was cancelled (a monitor command)."""
        await self.start_job(job).wait()

    def cancel_job(self) -> None:
        """Any run control (stop, cont, reset, quit) ends a job first: one driver at a
        time."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()
            self._job_ended.set()

    def _advance_job(self, job: Job) -> None:
        if job.advance() and self.job is job:
            self.job = None
            self._job_ended.set()

    # --- events and run control ---------------------------------------------------

    def emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        for listener in list(self.listeners):
            listener(event, data or {})

    def stop(self, status: str = "paused") -> None:
        """Pause the guest at the current slice boundary (QMP `stop`); ends a monitor step."""
        self._step_cancelled = self.stepping
        self.cancel_job()
        if self.running:
            self.running = False
            self.status = status
            self.emit("STOP")
        self.wake.set()

    def cont(self) -> None:
        """Resume the guest (QMP `cont`). A powered-off guest stays off until reset.

        A monitor step in progress ends first, so only the run loop drives the hart."""
        self._step_cancelled = self.stepping
        self.cancel_job()
        if not self.running and self.machine.exit_code is None:
            self.running = True
            self.status = "running"
            self.emit("RESUME")
        self.wake.set()

    def system_reset(self) -> None:
        self.cancel_job()
        self.machine.reset()
        if self.replay is not None:
            self.replay.reset_done()
        if self.status == "shutdown":
            self.status = "paused"
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        self.wake.set()

    def quit(self, reason: str = "host-qmp-quit") -> None:
        """End `run()`; it announces SHUTDOWN with `reason` (QMP's ShutdownCause) as it returns."""
        self.quit_requested = True
        self.quit_reason = reason
        self.wake.set()

    def step(self) -> RunState:
        """Execute one instruction while paused (gdb `s`); long steps are `step_async`."""
        state = self.replay.step() if self.replay is not None else self.machine.run_slice(1)
        self._after_slice(state)
        return state

    async def step_async(self, count: int) -> int:
        """Execute up to `count` instructions while paused (monitor `step`); returns how many
        steps ran.  Slices of at most SLICE instructions, with the loop served between
        them, so other clients, gdb and SIGTERM keep working; `stop`, `cont` and quit end
        the step at the next slice boundary.  A slice that retires nothing (the hart in
        WFI, the clock jumping to a timer) counts as one step, so a sleeping guest cannot
        keep the step going forever."""
        if self.stepping:
            raise RuntimeError("a step is already in progress")
        clock = self.machine.clock
        done = 0
        state = RunState.RUNNING
        self.stepping, self._step_cancelled = True, False
        try:
            while done < count and not (self._step_cancelled or self.quit_requested):
                before = clock.icount
                state = self._run_slice(min(count - done, SLICE))
                done += max(1, clock.icount - before)
                if state is not RunState.RUNNING:
                    break
                await asyncio.sleep(0)
        finally:
            self.stepping = False
        self._after_slice(state)
        return done

    async def run_for(self, ns: int) -> bool:
        """Run for `ns` of virtual time from now, then pause (monitor `run-for`).

        True when the span was reached; False when something else paused the guest
        first (`stop` from any client, a breakpoint, a power-off, quit).  The deadline
        is a timer on the virtual clock, so a guest idle in WFI jumps straight to it."""
        clock = self.machine.clock
        target = clock.now_ns + ns
        reached = False
        done = asyncio.Event()

        def expire() -> None:
            nonlocal reached
            reached = True
            self.stop()

        def listener(event: str, data: dict[str, Any]) -> None:
            if event in ("STOP", "SHUTDOWN"):
                done.set()

        timer = clock.timer(expire)
        timer.modify(target)
        self.listeners.append(listener)
        self.run_for_targets.append(target)
        try:
            self.cont()  # also wakes an idle loop: the timer is a deadline it must see
            if self.running and not self.quit_requested:
                await done.wait()
        finally:
            timer.cancel()
            self.listeners.remove(listener)
            self.run_for_targets.remove(target)
        return reached

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
            if self.job is not None:
                self._advance_job(self.job)
                await asyncio.sleep(0)
                continue
            if not self.running:
                self.wake.clear()
                await self.wake.wait()
                continue
            state = self._run_slice()
            self._after_slice(state)
            if state is RunState.IDLE:
                self.wake.clear()
                await self.wake.wait()
            else:
                await asyncio.sleep(0)
        self.cancel_job()  # nobody waits for its end forever
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
