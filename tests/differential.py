"""Scripted scenarios run on real QEMU (the oracle) and on our model, step by step.

A scenario is a list of steps.  Both runners turn it into one `Seen` per step:
the value a read returned, the interrupt edges the step caused, and whatever
else the device did (bytes sent, memory written).  The traces must be equal,
except at steps listed as a `Difference`: places where Debian's QEMU 7.2 (the
only oracle available) behaves differently from the newest QEMU, which the
model follows.  A Difference computes the newest behaviour from what 7.2
showed, following the spec line it cites, and it must really differ from what
7.2 showed -- so a stale entry fails instead of hiding a regression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class W:
    """MMIO write of `value` at `offset` (relative to the device base)."""

    offset: int
    value: int
    size: int = 4

    def __str__(self) -> str:
        return f"write{self.size} {self.offset:#05x} <- {self.value:#x}"


@dataclass(frozen=True)
class R:
    """MMIO read at `offset`; its value is part of the trace."""

    offset: int
    size: int = 4

    def __str__(self) -> str:
        return f"read{self.size} {self.offset:#05x}"


@dataclass(frozen=True)
class Dump:
    """The device's migration payload (QEMU: migrate to a file, with the VM paused).

    It shows hidden state no register reaches (timer deadlines, periods, FIFO slots).
    Only as a last step: QEMU ends the migration in state postmigrate."""

    def __str__(self) -> str:
        return "migration payload"


Edge = tuple[str, int]  # ("raise" | "lower", line)


@dataclass(frozen=True)
class Seen:
    """What one step showed."""

    step: str
    value: int | None = None
    irqs: tuple[Edge, ...] = ()
    output: bytes = b""
    dump: bytes = b""

    def __repr__(self) -> str:
        parts = [self.step]
        if self.value is not None:
            parts.append(f"-> {self.value:#x}")
        if self.irqs:
            parts.append(" ".join(f"{kind} {line}" for kind, line in self.irqs))
        if self.output:
            parts.append(f"out={self.output!r}")
        if self.dump:
            parts.append(self.dump.hex(" ", 4))
        return "<" + " | ".join(parts) + ">"


@dataclass(frozen=True)
class Difference:
    """At step `index`, newest QEMU shows `expect(trace_of_7_2)` instead; `why` cites the spec."""

    index: int
    why: str
    expect: Callable[[Sequence[Seen]], Seen]


def value_becomes(index: int, why: str, newest: Callable[[int], int]) -> Difference:
    """A read whose newest-QEMU value is a function of the value 7.2 returned."""

    def expect(trace: Sequence[Seen]) -> Seen:
        seen = trace[index]
        assert seen.value is not None
        return replace(seen, value=newest(seen.value))

    return Difference(index, why, expect)


def assert_same(qemu: Sequence[Seen], model: Sequence[Seen],
                differences: Sequence[Difference] = ()) -> None:
    expected = list(qemu)
    for difference in differences:
        expected[difference.index] = difference.expect(qemu)
        assert expected[difference.index] != qemu[difference.index], (
            f"documented 7.2 difference not shown by QEMU ({difference.why}): "
            f"{qemu[difference.index]}")
    assert len(model) == len(expected)
    if model != expected:
        first = next(i for i, (want, got) in enumerate(zip(expected, model, strict=True))
                     if want != got)
        listing = "\n".join(f"  {i:2} qemu  {want!r}\n     model {got!r}"
                             for i, (want, got) in enumerate(zip(expected, model, strict=True)))
        raise AssertionError(f"first difference at step {first}:\n{listing}")
