"""The one virtual clock that drives the machine, and its timers.

In icount mode every retired instruction advances virtual time by 2**shift ns,
so a run is a pure function of its inputs.  When the hart waits for an
interrupt the clock jumps straight to the next timer deadline.
"""

from __future__ import annotations

from collections.abc import Callable

from emud.vmstate import UINT64, Field, VMStateDescription

NEVER = 1 << 63  # expire_time of a timer that is not armed (like QEMU's -1)


class Timer:
    """A one-shot callback at an absolute virtual time in ns."""

    def __init__(self, clock: VirtualClock, callback: Callable[[], None]) -> None:
        self._clock = clock
        self.callback = callback
        self.expire_time = NEVER
        self.order = clock._next_order()  # tie-break for equal deadlines, stable across runs

    @property
    def pending(self) -> bool:
        return self.expire_time != NEVER

    def modify(self, deadline_ns: int) -> None:
        self.expire_time = max(0, deadline_ns)
        self._clock._timers.add(self)
        self._clock._reschedule()
        if self._clock.observer is not None:  # the timeline (--trace-file)
            self._clock.observer("arm", self)

    def cancel(self) -> None:
        self.expire_time = NEVER
        self._clock._timers.discard(self)
        self._clock._reschedule()


class VirtualClock:
    def __init__(self, shift: int = 0) -> None:
        if not 0 <= shift <= 10:
            raise ValueError(f"icount shift must be 0..10, not {shift}")
        self.shift = shift
        self.now_ns = 0
        self.icount = 0  # instructions retired since reset of the clock
        self._timers: set[Timer] = set()
        # The earliest expire_time of the armed timers, kept up to date as they are armed
        # and cancelled: advancing the clock (after every batch of instructions and every
        # synced instruction) compares with it instead of scanning the timers.
        self._deadline = NEVER
        self._created = 0
        self.observer: Callable[[str, Timer], None] | None = None  # told "arm" and "fire"

    def _next_order(self) -> int:
        self._created += 1
        return self._created

    def timer(self, callback: Callable[[], None]) -> Timer:
        return Timer(self, callback)

    def _reschedule(self) -> None:
        self._deadline = min((t.expire_time for t in self._timers), default=NEVER)

    def next_deadline(self) -> int:
        return self._deadline

    def insns_until_deadline(self, limit: int) -> int:
        """How many instructions may run before the earliest deadline (at least 1)."""
        deadline = self._deadline
        if deadline == NEVER:
            return limit
        step = 1 << self.shift
        gap = deadline - self.now_ns
        return max(1, min(limit, -(-gap // step)))

    def advance_insns(self, count: int) -> None:
        self.icount += count
        self.now_ns += count << self.shift
        if self.now_ns >= self._deadline:
            self.run_timers()

    def jump_to_next_deadline(self) -> bool:
        """Idle until the next deadline (WFI).  False when no timer is armed."""
        deadline = self.next_deadline()
        if deadline == NEVER:
            return False
        self.now_ns = max(self.now_ns, deadline)
        self.run_timers()
        return True

    def run_timers(self) -> None:
        """Run the timers that are due, each at most once per call.

        Callbacks may arm other timers, which run in the same call when due.  A
        timer that re-arms itself (or is re-armed) for a time already past, as an
        HPET deadline of 2^63 ns or more wraps to, waits for the next instruction
        boundary: the loop is bounded and time advances between its firings.
        """
        fired: set[Timer] = set()
        while self._timers:
            due = min(self._timers, key=lambda t: (t.expire_time, t.order))
            if due.expire_time > self.now_ns:
                return
            if due in fired:
                due.expire_time = self.now_ns + (1 << self.shift)
                self._reschedule()
                continue
            fired.add(due)
            due.cancel()
            if self.observer is not None:
                self.observer("fire", due)
            due.callback()


# The virtual clock's section: first in every snapshot (device timers are deadlines on it).
VMSTATE_VIRTUAL_CLOCK = VMStateDescription(
    "emud-clock", 1, 1, [Field("now_ns", UINT64), Field("icount", UINT64)])
