"""What the stub needs from the thing it debugs, and how that thing says why it stopped.

The stub knows nothing of any machine: it asks a `Target` for registers,
memory, run control and, through optional capabilities, breakpoints,
watchpoints, monitor commands and a memory map.  A capability accessor returns
None when the target lacks it; `qSupported` and the accepted packets follow
from those answers.  Registers are little-endian, `register_size` bytes each.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

# --- stop reasons (a closed union) ---------------------------------------------------


@dataclass(frozen=True)
class Halted:
    """Stopped with nothing more to say (SIGTRAP): the state on attach."""


@dataclass(frozen=True)
class Stepped:
    """A single step completed."""


@dataclass(frozen=True)
class BreakpointHit:
    """Stopped at a breakpoint, before executing the instruction there."""

    hardware: bool = False


class WatchKind(Enum):
    WRITE = "watch"  # Z2
    READ = "rwatch"  # Z3
    ACCESS = "awatch"  # Z4


@dataclass(frozen=True)
class WatchpointHit:
    """Stopped before an access to a watched range; `addr` is the first watched byte."""

    kind: WatchKind
    addr: int


@dataclass(frozen=True)
class Interrupted:
    """Stopped on request (Ctrl-C, or another control plane paused the machine)."""


@dataclass(frozen=True)
class Exited:
    """The program ended (for a machine: it powered off) with this exit code."""

    code: int


@dataclass(frozen=True)
class HistoryEnd:
    """Reverse execution reached the start of the recorded history (`replaylog:begin`),
    or forward replay its end (`replaylog:end`)."""

    begin: bool = True


StopReason = (Halted | Stepped | BreakpointHit | WatchpointHit | Interrupted | Exited
              | HistoryEnd)


# --- the target ------------------------------------------------------------------


class Breakpoints(Protocol):
    def add_breakpoint(self, addr: int, hardware: bool) -> bool: ...
    def remove_breakpoint(self, addr: int, hardware: bool) -> bool: ...


class Watchpoints(Protocol):
    def add_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool: ...
    def remove_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool: ...


class Monitor(Protocol):
    def monitor_command(self, command: str) -> str:
        """Run one `monitor …` line; returns its text output (errors included)."""
        ...


class Reverse(Protocol):
    """Reverse execution (`bs`, `bc`).  Like `Target.resume`: return the stop if known
    at once, or None while the target goes on and reports it later (`Session.stopped`);
    Ctrl-C meanwhile reaches `Target.interrupt`."""

    def reverse_step(self) -> StopReason | None: ...
    def reverse_continue(self) -> StopReason | None: ...


class Target(Protocol):
    register_size: int
    gdb_register_count: int  # how many registers the `g` packet carries (0..n-1)
    pc_regnum: int  # for `c addr` / `s addr`
    step_irqs: bool  # take interrupts during a single step (QEMU's sstep NOIRQ bit clear)
    expedited_registers: tuple[int, ...]  # sent with every stop: gdb then skips its `g`

    def target_xml(self) -> str: ...
    def read_register(self, regnum: int) -> int | None:
        """None: the register does not exist or cannot be read now."""
        ...
    def write_register(self, regnum: int, value: int) -> bool: ...
    def read_memory(self, addr: int, length: int) -> bytes:
        """Side-effect free; may return fewer bytes (a prefix), empty if unreadable."""
        ...
    def write_memory(self, addr: int, data: bytes) -> bool: ...

    def attach(self) -> StopReason:
        """A debugger connected: stop and say in which state the program is."""
        ...
    def resume(self, step: bool) -> StopReason | None:
        """Continue or single-step.  A stop that happens later is reported by whoever
        drives the target (see `Session.stopped`); return it here if known at once."""
        ...
    def interrupt(self) -> None:
        """Ctrl-C: stop soon and report Interrupted."""
        ...
    def detach(self) -> None: ...
    def kill(self) -> None: ...

    # optional capabilities
    def breakpoints(self) -> Breakpoints | None: ...
    def watchpoints(self) -> Watchpoints | None: ...
    def monitor(self) -> Monitor | None: ...
    # Optional, and not part of this protocol so that older targets stay valid:
    # `def reverse(self) -> Reverse | None` gives reverse execution (`bs`, `bc`).
    def memory_map(self) -> str | None: ...
