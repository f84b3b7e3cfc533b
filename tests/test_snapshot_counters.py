"""Every value the guest or a debugger can write to a counter CSR saves and loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import IMAGES, boot
from emud import migration as mg
from emud.cpu.csr import Csr, is_read_only
from emud.snapshots import SnapshotStore

COUNTERS = (Csr.MCYCLE, Csr.MCYCLEH, Csr.MINSTRET, Csr.MINSTRETH)
READABLE = (Csr.MCYCLE, Csr.MCYCLEH, Csr.MINSTRET, Csr.MINSTRETH, Csr.CYCLE, Csr.CYCLEH,
            Csr.INSTRET, Csr.INSTRETH)
EXTREMES = (0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF)


def counters(machine: object) -> list[int]:
    hart = machine.hart  # type: ignore[attr-defined]
    return [hart.csr_read(c, 0) for c in READABLE]


@pytest.mark.parametrize("csr", COUNTERS, ids=lambda c: Csr(c).name.lower())
@pytest.mark.parametrize("value", EXTREMES, ids=hex)
def test_counter_written_to_an_extreme_value_saves_and_loads(tmp_path: Path, csr: int,
                                                             value: int) -> None:
    machine = boot(IMAGES / "counter.elf", icount_shift=0)
    machine.run_until_poweroff(max_insns=1_000)  # a clock that is not zero
    for other in COUNTERS:  # the other half at its extreme too: carries across the halves
        machine.hart.csr_write(other, 0xFFFF_FFFF, 0)
    machine.hart.csr_write(csr, value, 0)
    saved = counters(machine)
    store = SnapshotStore(tmp_path / "s.sqlite")
    mg.savevm(machine, store, "extreme")
    fresh = boot(IMAGES / "counter.elf", icount_shift=0)
    mg.loadvm(fresh, store, "extreme")
    assert counters(fresh) == saved
    fresh.run_until_poweroff(max_insns=500)
    machine.run_until_poweroff(max_insns=500)
    assert counters(fresh) == counters(machine)  # they keep counting (and wrapping) alike


def test_every_writable_csr_at_all_ones_saves_and_loads(tmp_path: Path) -> None:
    machine = boot(IMAGES / "counter.elf", icount_shift=0)
    machine.run_until_poweroff(max_insns=1_000)
    writable = [c for c in Csr if not is_read_only(c)]
    for csr in writable:
        machine.hart.csr_write(csr, 0xFFFF_FFFF, 0)
    before = [machine.hart.csr_read(c, 0) for c in Csr]
    store = SnapshotStore(tmp_path / "s.sqlite")
    mg.savevm(machine, store, "ones")
    fresh = boot(IMAGES / "counter.elf", icount_shift=0)
    mg.loadvm(fresh, store, "ones")
    assert [fresh.hart.csr_read(c, 0) for c in Csr] == before


def test_counter_arithmetic_wraps_at_64_bits() -> None:
    machine = boot(IMAGES / "counter.elf", icount_shift=0)
    hart = machine.hart
    hart.csr_write(Csr.MCYCLEH, 0xFFFF_FFFF, 0)
    hart.csr_write(Csr.MCYCLE, 0xFFFF_FFFF, 0)
    machine.run_until_poweroff(max_insns=10)
    # 2**64 - 1 plus the cycles since: wrapped round to small values, the high half zero
    assert hart.csr_read(Csr.MCYCLEH, 0) == 0
    assert 0 <= hart.csr_read(Csr.MCYCLE, 0) < 20
    assert 0 <= hart.cycle_offset < 1 << 64 and 0 <= hart.instret_offset < 1 << 64
