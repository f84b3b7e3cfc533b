"""Record/replay and reverse execution for one machine (docs/replay.md).

`Replay` sits between the daemon's run control and the machine.  Live, it logs
every input (events.py) at the boundary where the guest sees it and takes a
checkpoint every `interval` instructions.  Behind the newest point of history
(the *head*) it re-executes: inputs come from the log, host input is refused,
and output the host already received is muted.  Going back is "restore the
nearest checkpoint at or before the target, run forward to it".

A position is the boundary before instruction `icount` after every event
logged at that count (the state a debugger sees there).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from emud.chardev import CharBackend
from emud.cpu.csr import INTERRUPT_BIT
from emud.cpu.debug import BREAK, DebugStop, Watchpoint
from emud.machine import SLICE, Machine, RunState
from emud.replay.checkpoints import Checkpoint, CheckpointRing
from emud.replay.events import Event, Kind, apply

DEFAULT_BUDGET = 256 << 20
DEFAULT_INTERVAL = 4_000_000  # instructions between automatic checkpoints, at most
# ...and at most this much host time while recording: the first step back replays from
# the checkpoint before it, so its cost is bounded by this whatever the guest's speed.
# Checkpoints are invisible to the guest: taking more of them changes no guest byte.
DEFAULT_SECONDS = 0.15
CACHE_DISTANCE = 50_000  # a seek that replays more than this leaves a checkpoint near its end
CACHE_NEAR = 4_000


@dataclass(frozen=True)
class Hit:
    """The last debug stop reverse-continue found: the stop, and where it leaves the hart."""

    stop: DebugStop
    icount: int


T = TypeVar("T", covariant=True)  # a move that finds a Hit is a move that finds something
Steps = Generator[None, None, None]  # one bounded slice of work per `next`


def _drain(steps: Generator[None, None, object]) -> None:
    for _ in steps:
        pass


class Travel(Generic[T]):
    """A move through history in progress (a reverse-continue, a seek), advanced one
    slice at a time by its driver (the daemon's run loop), so the event loop is served
    between slices.  `result` is the move's answer once `done`.

    `cancel` ends it where it started: the exact position before it, from a checkpoint
    taken there, with the debug stop the hart had."""

    def __init__(self, replay: Replay, steps: Generator[None, None, T]) -> None:
        self.replay = replay
        self.result: T | None = None
        self.done = False
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None  # told when anything cancels it
        self.slices = 0  # how many times `advance` ran: a measure that needs no clock
        self._stop_before = replay.machine.hart.debug_stop
        self._origin = replay.ring.take(replay.machine, replay.delivered, keep=True)
        self._steps = steps
        replay.travel = self

    def advance(self) -> bool:
        """Do one bounded slice of the move; True when it has ended (see `result`)."""
        if self.done:
            return True
        self.slices += 1
        try:
            next(self._steps)
        except StopIteration as end:
            self.result = end.value
            self.done = True
        return self.done

    def cancel(self) -> None:
        if self.done:
            return
        self.done = self.cancelled = True
        self._steps.close()  # its `finally` re-arms the debug points a seek disarmed
        replay = self.replay
        if self._origin in replay.ring.items:
            replay._restore(self._origin)
        else:  # thinned away by checkpoints the move cached: replay to its count
            replay.seek(self._origin.icount)
        replay.machine.hart.debug_stop = self._stop_before
        if self.on_cancel is not None:
            self.on_cancel()


class Replay:
    def __init__(self, machine: Machine, *, budget: int = DEFAULT_BUDGET,
                 interval: int = DEFAULT_INTERVAL, seconds: float | None = DEFAULT_SECONDS
                 ) -> None:
        self.machine = machine
        self.interval = interval
        self.seconds = seconds  # None: checkpoints by instruction count only
        self._taken_at = time.perf_counter()
        self._grid = 0  # icount of the last checkpoint on the instruction grid
        self.ring = CheckpointRing(budget)
        self.events: list[Event] = []
        self.delivered = 0  # events of the log delivered so far (the position in it)
        self.head = (0, 0, 0)  # (icount, events, now_ns): the newest point of history
        self.head_pc = machine.hart.pc
        self.emitted = 0  # icount up to which the host has had the output
        self.playing_file = False  # the head is a recorded session's end, not live
        self.on_end: Callable[[], None] | None = None  # a played session reached its end
        self.on_event: Callable[[Event], None] | None = None  # a live event (session file)
        # History restarts (loadvm): called with the old head (icount, events, now_ns)
        self.on_branch: Callable[[tuple[int, int, int]], None] | None = None
        self.on_checkpoint: Callable[[], None] | None = None  # live, after each one
        self.breaks: set[int] = set()  # replay-break icounts (QMP)
        self.on_break: Callable[[], None] | None = None
        self.travel: Travel[object] | None = None  # the latest sliced move (Travel)
        for port in machine.input_ports:
            port.input_hook = self._serial_input
        self.restart()

    # --- where we are -----------------------------------------------------------------

    @property
    def icount(self) -> int:
        return self.machine.clock.icount

    def _position(self) -> tuple[int, int, int]:
        clock = self.machine.clock
        return (clock.icount, self.delivered, clock.now_ns)

    def _set_head(self) -> None:
        self.head = self._position()
        self.head_pc = self.machine.hart.pc

    @property
    def replaying(self) -> bool:
        """Behind the head: forward execution follows the log."""
        return self._position() < self.head

    @property
    def mode(self) -> str:
        return "play" if self.playing_file else "replay" if self.replaying else "record"

    @property
    def start(self) -> int:
        return self.ring.items[0].icount if self.ring.items else self.icount

    def at_start(self) -> bool:
        first = self.ring.items[0] if self.ring.items else None
        return first is not None and (first.icount, first.events) >= (self.icount,
                                                                        self.delivered)

    # --- history ---------------------------------------------------------------------

    def restart(self) -> None:
        """A new branch from the machine's present state (start, loadvm): old history goes."""
        if self.ring.items and self.on_branch is not None:
            self.on_branch(self.head)
        self.ring.clear()
        self.events = []
        self.delivered = 0
        self._set_head()
        self.emitted = self.icount
        self.ring.take(self.machine, 0)
        self._grid = self.icount

    def load_events(self, events: list[Event], end: tuple[int, int]) -> None:
        """Play a recorded session: `events` after the present state, up to `end`
        (icount, now_ns)."""
        self.events = list(events)
        self.head = (end[0], len(self.events), end[1])
        self.playing_file = self._position() < self.head

    def _log(self, event: Event) -> None:
        travel = self.travel
        if travel is not None and not travel.done:
            # Input during a move lands where the move started, not on the transient
            # state it is replaying: cancel it, then redo a write made on that state.
            travel.cancel()
            event = replace(event, icount=self.icount, now_ns=self.machine.clock.now_ns)
            if event.kind is not Kind.SERIAL:  # serial data reaches the device after this
                apply(self.machine, event)
        if self.replaying:  # a live input in the past: the future is rewritten from here
            self._truncate()
        self.events.append(event)
        self.delivered += 1
        self._set_head()
        if self.on_event is not None:
            self.on_event(event)

    def _truncate(self) -> None:
        del self.events[self.delivered :]
        ring = self.ring
        while len(ring.items) > 1 and (ring.items[-1].icount, ring.items[-1].events) > (
                self.icount, self.delivered):
            ring._drop(len(ring.items) - 1)
        self.playing_file = False
        self._set_head()

    def _event(self, kind: Kind, a: int = 0, b: int = 0, data: bytes = b"") -> Event:
        clock = self.machine.clock
        return Event(clock.icount, clock.now_ns, kind, a, b, data)

    # --- inputs from outside (the hooks) ------------------------------------------------

    def _serial_input(self, backend: CharBackend, data: bytes) -> bool:
        if self.playing_file:
            return False  # a recorded session's input comes from its log only
        index = next(i for i, s in enumerate(self.machine.input_ports) if s is backend)
        self._log(self._event(Kind.SERIAL, index, data=data))
        return True

    def memory_written(self, addr: int, data: bytes) -> None:
        """A control plane wrote guest memory (after the write)."""
        self._log(self._event(Kind.MEMORY, addr, data=bytes(data)))

    def register_written(self, reg: int, value: int) -> None:
        """A control plane wrote a register (events.write_register's numbering)."""
        self._log(self._event(Kind.REGISTER, reg, value))

    def reset_done(self) -> None:
        """A control plane reset the machine (after machine.reset())."""
        self._log(self._event(Kind.RESET))

    # --- running ---------------------------------------------------------------------

    def _next_event(self) -> Event | None:
        return self.events[self.delivered] if self.delivered < len(self.events) else None

    def _deliver_due(self) -> None:
        clock = self.machine.clock
        while (event := self._next_event()) is not None and event.icount <= clock.icount \
                and event.now_ns <= clock.now_ns and event.kind is not Kind.MASKED_STEP:
            apply(self.machine, event)
            self.delivered += 1

    def run_slice(self, limit: int = SLICE) -> RunState:
        """One slice of the daemon's run: live, or following the log behind the head."""
        ahead = [b - self.icount for b in self.breaks if b > self.icount]
        limit = min([limit, *ahead])
        if not self.replaying:
            state = self._live_slice(limit)
        else:
            state = self._history_slice(limit)
            if not self.replaying:
                self._reached_head()
        if self.breaks and self.icount in self.breaks and self.on_break is not None:
            self.breaks.discard(self.icount)
            self.on_break()
        return state

    def _reached_head(self) -> None:
        if self.playing_file:
            self.playing_file = False
            if self.on_end is not None:
                self.on_end()

    def _live_slice(self, limit: int) -> RunState:
        machine = self.machine
        last = self.ring.items[-1] if self.ring.items else None
        # The instruction grid (slice ends, session marks) ignores checkpoints taken by
        # host time, so how fast the host ran changes nothing a session records.
        self._grid = min(self._grid, self.icount)
        due = self._grid + self.interval - self.icount
        state = machine.run_slice(max(1, min(limit, due)))
        self._set_head()
        if last is None or self.icount >= self._grid + self.interval:
            self._take()
            self._grid = self.icount
            if self.on_checkpoint is not None:
                self.on_checkpoint()
        elif (self.seconds is not None and self.icount > last.icount
              and time.perf_counter() - self._taken_at >= self.seconds):
            self._take()
        self.emitted = max(self.emitted, self.icount)
        return state

    def _take(self) -> None:
        self.ring.take(self.machine, self.delivered)
        self._taken_at = time.perf_counter()

    def _history_slice(self, limit: int, masked_as_logged: bool = True) -> RunState:
        machine = self.machine
        clock = machine.clock
        self._deliver_due()
        event = self._next_event()
        if event is not None and event.icount == clock.icount:
            if event.kind is Kind.MASKED_STEP:
                self.delivered += 1
                return self._masked(1)
            if clock.now_ns < event.now_ns:  # the hart sleeps: time jumps come first
                return machine.wait_step() or RunState.RUNNING
            apply(machine, event)  # cannot happen in a consistent log; stay in step
            self.delivered += 1
            return RunState.RUNNING
        caps = [limit, self.head[0] - clock.icount]
        if event is not None:
            caps.append(event.icount - clock.icount)
        if clock.icount < self.emitted:
            caps.append(self.emitted - clock.icount)
        count = max(0, min(caps))
        if count == 0:  # at the head's count, behind its time: sleep on to it
            self._mute(False)
            return machine.wait_step() or RunState.RUNNING
        self._mute(clock.icount < self.emitted)
        try:
            state = machine.run_slice(count)
        finally:
            self._mute(False)
        last = self.ring.items[-1] if self.ring.items else None
        if last is None or clock.icount >= last.icount + self.interval:
            self.ring.take(machine, self.delivered)
        self._deliver_due()
        self.emitted = max(self.emitted, clock.icount)
        return state

    def _masked(self, count: int) -> RunState:
        hart = self.machine.hart
        saved, hart.irqs_masked = hart.irqs_masked, True
        try:
            return self.machine.run_slice(count)
        finally:
            hart.irqs_masked = saved

    def _mute(self, muted: bool) -> None:
        for port in self.machine.input_ports:  # the semihosting console writes too
            port.muted = muted

    def step(self) -> RunState:
        """One debugger single step (the caller set hart.irqs_masked as it wants).

        Behind the head the log decides whether interrupts were masked; live, a masked
        step that may have kept an interrupt out is logged."""
        hart = self.machine.hart
        if self.replaying:
            saved, hart.irqs_masked = hart.irqs_masked, False
            try:
                state = self._history_slice(1)
                self._enter_pending_irq()
            finally:
                hart.irqs_masked = saved
            if not self.replaying:
                self._reached_head()
            return state
        masked = hart.irqs_masked
        before = self._event(Kind.MASKED_STEP)
        pending = masked and self._irq_waiting()
        state = self._live_slice(1)
        if masked and (pending or self._irq_waiting()):
            self.events.append(before)
            self.delivered += 1
            self._set_head()
            if self.on_event is not None:
                self.on_event(before)
        return state

    def _enter_pending_irq(self) -> None:
        """A step in history lands where history went next: into the handler of an
        interrupt taken at this boundary (a live stop there, at a breakpoint in the
        handler, showed it entered), unless history stepped on with it masked, or
        this is the head and the live hart had not entered it."""
        hart = self.machine.hart
        event = self._next_event()
        if event is not None and event.icount == self.icount and \
                event.kind is Kind.MASKED_STEP:
            return
        if self._position() >= self.head and hart.pc == self.head_pc:
            return
        irq = hart._deliverable_irq()
        if irq is not None:
            hart.waiting = False
            hart.pc = hart.enter_trap(INTERRUPT_BIT | irq, 0, hart.pc)

    def _irq_waiting(self) -> bool:
        hart = self.machine.hart
        saved, hart.irqs_masked = hart.irqs_masked, False
        try:
            return hart._deliverable_irq() is not None
        finally:
            hart.irqs_masked = saved

    # --- going anywhere --------------------------------------------------------------

    def _disarm(self) -> tuple[set[int], list[Watchpoint]]:
        hart = self.machine.hart
        breaks, watches = set(hart.breakpoints), list(hart.watchpoints)
        for pc in breaks:
            hart.set_breakpoint(pc, False)
        for w in watches:
            hart.remove_watchpoint(w)
        return breaks, watches

    def _arm(self, points: tuple[set[int], list[Watchpoint]]) -> None:
        hart = self.machine.hart
        for pc in points[0]:
            hart.set_breakpoint(pc, True)
        for w in points[1]:
            hart.add_watchpoint(w)

    def _restore(self, cp: Checkpoint) -> None:
        self.ring.restore(self.machine, cp)
        self.delivered = cp.events

    def seek(self, icount: int) -> bool:
        """Go to `icount` (clamped to history); False when that is before its start.

        Debug points are off on the way: only the destination counts."""
        _drain(self._seek_steps(icount))
        return icount >= self.start

    def seek_travel(self, icount: int) -> Travel[None]:
        """`seek` as a move to advance slice by slice (or cancel)."""
        return Travel(self, self._seek_steps(icount))

    def _seek_steps(self, icount: int) -> Steps:
        target = max(self.start, min(icount, self.head[0]))
        points = self._disarm()
        try:
            yield from self._go(target)
        finally:
            self._arm(points)

    def _go(self, target: int) -> Steps:
        cp = self.ring.before(target)
        here = (self.icount, self.delivered)
        if cp is not None and not ((cp.icount, cp.events) <= here and here[0] <= target):
            self._restore(cp)  # forward from here would not pass the target
        if target - self.icount > CACHE_DISTANCE:  # the next step back starts near here
            yield from self._play_steps(target - CACHE_NEAR)
            self.ring.take(self.machine, self.delivered, keep=True)
        yield from self._play_steps(target)

    def _events_through(self, icount: int) -> int:
        """How many events are logged at or before `icount` (not counting its step)."""
        n = 0
        for event in self.events:
            if event.icount > icount or (event.icount == icount
                                         and event.kind is Kind.MASKED_STEP):
                break
            n += 1
        return n

    def _play_to(self, target: int) -> None:
        _drain(self._play_steps(target))

    def _play_steps(self, target: int, on_stop: Callable[[DebugStop], None] | None = None
                    ) -> Steps:
        """Follow the log to the position at `target` (the head's exactly, if it is there),
        yielding after each slice of at most SLICE instructions."""
        clock = self.machine.clock
        idle = 0
        while True:
            if clock.icount >= target:
                self._deliver_due()
                if clock.icount > target or not self.replaying:
                    return
                event = self._next_event()
                at_head_time = target == self.head[0] and clock.now_ns < self.head[2]
                if (event is None or event.icount > target
                        or event.kind is Kind.MASKED_STEP) and not at_head_time:
                    return
            before = self._position()
            state = self._history_slice(max(1, min(SLICE, target - clock.icount)))
            yield
            if state is RunState.DEBUG and on_stop is not None:
                stop = self.machine.hart.debug_stop
                assert stop is not None
                on_stop(stop)
                continue
            if state is RunState.POWEROFF or self._position() == before:
                idle += 1
                if idle > 2:
                    return
            else:
                idle = 0

    def reverse_step(self) -> bool:
        """One instruction back; False (and no move) at the start of history."""
        if self.at_start():
            return False
        moved = self.seek(self.icount - 1)
        self._enter_pending_irq()  # where a forward step in history lands, too
        return moved

    def reverse_continue(self) -> Hit | None:
        """Go back to the latest breakpoint hit or watchpoint trigger before here; None
        (at the start of history) when there is none.  A watchpoint leaves the hart just
        after the writing instruction, a breakpoint before the instruction at it.

        All at once: the daemon runs a `reverse_search` a slice at a time instead."""
        search = self.reverse_search()
        while not search.advance():
            pass
        return search.result

    def reverse_search(self) -> Travel[Hit | None]:
        """`reverse_continue` as a move to advance slice by slice (or cancel)."""
        return Travel(self, self._reverse_steps())

    def _reverse_steps(self) -> Generator[None, None, Hit | None]:
        end = self.icount
        if self.at_start():
            return None
        segment_end = end
        starts = [cp for cp in self.ring.items if cp.icount < end]
        for cp in reversed(starts):
            hits: list[tuple[int, DebugStop]] = []
            self._restore(cp)
            yield  # a restore copies the whole RAM: worth a visit to the loop

            def found(stop: DebugStop) -> None:
                hits.append((self.icount, stop))  # noqa: B023 - used before the loop moves

            yield from self._play_steps(segment_end, on_stop=found)
            hits = [h for h in hits if h[0] < segment_end]
            if hits:
                icount, stop = hits[-1]
                target = icount + 1 if stop.kind != BREAK else icount
                yield from self._seek_steps(target)
                if stop.kind == BREAK:
                    if self.machine.hart.pc != stop.addr:  # hit on an interrupt's entry
                        self._enter_pending_irq()
                    stop.pc = self.machine.hart.pc
                    self.machine.hart.debug_stop = stop
                return Hit(stop, target)
            segment_end = cp.icount
        yield from self._seek_steps(self.start)
        return None
