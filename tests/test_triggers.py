"""Sdtrig debug triggers: the CSRs' WARL rules, execute/load/store matches, snapshots, QEMU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from emud.chardev import RingBackend
from emud.cpu.csr import PRV_M, PRV_U
from emud.cpu.hart import VMSTATE_HART, HartState
from emud.cpu.triggers import EXECUTE, LOAD, M_BIT, RESET_TDATA1, STORE, U_BIT, Triggers
from emud.loader import load_elf
from emud.machine import Machine
from emud.vmstate import VMStateDescription, VMStateError
from tests.conftest import IMAGES, RECORD_TRAP, ROOT

TRIGGERS_ELF = IMAGES / "triggers.elf"
Build = Callable[[str], Path]

# Arms trigger 0 (tdata2 = the label `watched` / `target`, tdata1 = s1), runs the access,
# and the handler stores mcause, mepc, mtval, then disarms and returns (the access reruns;
# an illegal instruction is skipped).
GUEST = """
.option norelax
.globl _start
_start:
    la t0, trap
    csrw mtvec, t0
    csrsi mstatus, 8
    la s0, out
    li t0, {tdata1}
    csrw tdata1, t0
    la t0, {where}
    csrw tdata2, t0
    la t1, watched
access:
    {access}
    lui t0, 0x100
    li t1, 0x5555
    sw t1, 0(t0)
1:  j 1b
.balign 4
trap:
{record_trap}    lw t0, 12(s0)
    addi t0, t0, 1
    sw t0, 12(s0)
    li t0, 0x20000000
    csrw tdata1, t0
    csrr t0, mcause
    li t2, 2
    bne t0, t2, 2f
    csrr t0, mepc  # an illegal instruction (4 bytes): skip it
    addi t0, t0, 4
    csrw mepc, t0
2:  mret
target:
    ret
.data
.balign 8
watched: .word 0x11223344, 0x55667788
out: .word 0, 0, 0, 0
"""


def run_guest(build_asm: Build, tdata1: int, where: str, access: str,
              accel: str = "translate") -> tuple[list[int], dict[str, int], Machine]:
    elf = build_asm(GUEST.format(tdata1=tdata1, where=where, access=access,
                                  record_trap=RECORD_TRAP))
    machine = Machine(RingBackend(), accel=accel)
    machine.load(load_elf(elf))
    assert machine.run_until_poweroff(100_000) == 0
    assert machine.image is not None
    symbols = machine.image.symbols
    data = machine.bus.read_bytes(symbols["out"], 16)
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, 16, 4)], symbols, machine


MCONTROL = RESET_TDATA1


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_execute_trigger(build_asm: Build, accel: str) -> None:
    (cause, mepc, mtval, hits), sym, _ = run_guest(
        build_asm, MCONTROL | M_BIT | EXECUTE, "target", "call target", accel)
    assert (cause, mepc, mtval, hits) == (3, sym["target"], sym["target"], 1)


@pytest.mark.parametrize("accel", ["interp", "translate"])
@pytest.mark.parametrize(("kind", "access", "offset"), [
    (LOAD, "lw a0, 0(t1)", 0), (LOAD, "lb a0, 2(t1)", 2), (LOAD, "lw a0, 0(t1)", 3),
    (STORE, "sw zero, 0(t1)", 0), (STORE, "sh zero, 2(t1)", 2),
    (STORE, "amoadd.w a0, zero, (t1)", 0), (LOAD, "amoadd.w a0, zero, (t1)", 0),
    (LOAD, "lr.w a0, (t1)", 0),
])
def test_data_triggers(build_asm: Build, accel: str, kind: int, access: str,
                       offset: int) -> None:
    (cause, mepc, mtval, hits), sym, machine = run_guest(
        build_asm, MCONTROL | M_BIT | kind, f"watched + {offset}", access, accel)
    assert (cause, mepc, mtval, hits) == (3, sym["access"], sym["watched"] + offset, 1)
    # Timing "before": the first try changed nothing; the rerun after the handler did.
    if kind == STORE and "amo" not in access:
        word = int.from_bytes(machine.bus.read_bytes(sym["watched"], 4), "little")
        assert word == (0 if access.startswith("sw") else 0x3344)


@pytest.mark.parametrize(("tdata1", "where", "access"), [
    (MCONTROL | M_BIT | LOAD, "watched + 4", "lw a0, 0(t1)"),  # the next word
    (MCONTROL | M_BIT | LOAD, "watched", "sw zero, 0(t1)"),  # a store, not a load
    (MCONTROL | M_BIT | STORE, "watched", "lw a0, 0(t1)"),
    (MCONTROL | U_BIT | LOAD | STORE | EXECUTE, "watched", "lw a0, 0(t1)"),  # U only
    (MCONTROL | M_BIT | LOAD | (3 << 16), "watched", "lb a0, 0(t1)"),  # sizelo: words
    (MCONTROL | M_BIT | EXECUTE, "target", "csrci mstatus, 8; call target"),  # MIE off
])
def test_triggers_that_do_not_fire(build_asm: Build, tdata1: int, where: str,
                                   access: str) -> None:
    assert run_guest(build_asm, tdata1, where, access)[0] == [0, 0, 0, 0]


def test_warl_fields() -> None:
    triggers = Triggers()
    assert triggers.read(0x7A4) == 1 << 2 and triggers.read(0x7A1) == RESET_TDATA1
    assert triggers.write(0x7A0, 1) and triggers.read(0x7A0) == 1
    assert triggers.write(0x7A0, 2) and triggers.read(0x7A0) == 1  # out of range: kept
    # dmode, action, chain, match, timing, hit, s are not writable; type must stay 2
    triggers.write(0x7A1, 0xFFFF_FFFF & ~(0xF << 28) | (2 << 28))
    assert triggers.read(0x7A1) == RESET_TDATA1 | (3 << 16) | M_BIT | U_BIT | 7
    triggers.write(0x7A1, 0)
    triggers.write(0x7A1, (6 << 28) | M_BIT)
    assert triggers.read(0x7A1) == RESET_TDATA1 | (3 << 16) | M_BIT | U_BIT | 7
    triggers.write(0x7A3, 5)
    triggers.write(0x7A4, 0)
    assert (triggers.read(0x7A3), triggers.read(0x7A4)) == (0, 1 << 2)
    assert triggers.read(0x7A6) is None and not triggers.write(0x7A5, 0)


def test_privilege_bits_match_the_current_privilege() -> None:
    triggers = Triggers()
    triggers.write(0x7A2, 0x100)
    triggers.write(0x7A1, MCONTROL | U_BIT | LOAD)
    assert triggers.match_access(0x100, 4, False, PRV_U, False) == 0x100
    assert triggers.match_access(0x100, 4, False, PRV_M, True) is None
    triggers.write(0x7A1, MCONTROL | M_BIT | LOAD)
    assert triggers.match_access(0x100, 4, False, PRV_M, True) == 0x100
    assert triggers.match_access(0x100, 4, False, PRV_M, False) is None
    assert triggers.match_access(0x100, 4, False, PRV_U, True) is None


def test_unused_trigger_csrs_stay_illegal(build_asm: Build) -> None:
    (cause, mepc, mtval, _), sym, _ = run_guest(
        build_asm, MCONTROL, "watched", "csrr a0, 0x7a5")
    assert (cause, mepc, mtval) == (2, sym["access"], 0x7A502573)


# --- snapshots --------------------------------------------------------------------------

OLD_HART = VMStateDescription("cpu", 1, 1, VMSTATE_HART.fields)  # before triggers


def test_snapshot_carries_triggers_only_when_configured(build_asm: Build) -> None:
    machine = Machine(RingBackend())
    machine.load(load_elf(TRIGGERS_ELF))
    view = HartState(machine.hart)
    plain = VMSTATE_HART.save(view)
    assert plain == OLD_HART.save(view)  # unconfigured: the bytes of before
    machine.hart.triggers.write(0x7A0, 1)
    machine.hart.triggers.write(0x7A2, 0x8000_0010)
    machine.hart.triggers.write(0x7A1, MCONTROL | M_BIT | EXECUTE)
    configured = VMSTATE_HART.save(view)
    assert configured.startswith(plain) and len(configured) > len(plain)

    other = Machine(RingBackend())
    other.load(load_elf(TRIGGERS_ELF))
    VMSTATE_HART.load(HartState(other.hart), configured, VMSTATE_HART.version_id)
    triggers = other.hart.triggers
    assert (triggers.tselect, triggers.tdata1[1], triggers.tdata2[1]) == (
        1, MCONTROL | M_BIT | EXECUTE, 0x8000_0010)
    assert triggers.execute == {0x8000_0010}
    # An old snapshot (no subsection) leaves no trigger armed.
    VMSTATE_HART.load(HartState(other.hart), plain, VMSTATE_HART.version_id)
    assert not other.hart.triggers.configured and not other.hart.triggers.armed


def test_snapshot_with_a_bad_trigger_state_is_refused() -> None:
    machine = Machine(RingBackend())
    machine.load(load_elf(TRIGGERS_ELF))
    machine.hart.triggers.write(0x7A2, 4)
    data = bytearray(VMSTATE_HART.save(HartState(machine.hart)))
    data[-20:-16] = (7).to_bytes(4, "big")  # tselect = 7
    with pytest.raises(VMStateError, match="trigger"):
        VMSTATE_HART.load(HartState(machine.hart), bytes(data), VMSTATE_HART.version_id)
    assert machine.hart.triggers.tselect == 0 and machine.hart.triggers.tdata2[0] == 4


# --- the guest, against QEMU -----------------------------------------------------------

# Where emud follows the debug spec (or says no) and QEMU 7.2 differs: label -> emud's line.
EMUD_ONLY = {
    "tselect0: tinfo": "tinfo=0x4",  # QEMU also offers type 6 (mcontrol6)
    "load:": "tval=0x80080004",  # mtval: the matched address (QEMU: 0)
    "store:": "tval=0x80080004",
    "word load over the matched byte:": "tval=0x80080006",
    "load of the next word:": "traps=0",  # match 0 is "equal" (QEMU watches 8 bytes)
    "trigger 1 execute:": "tval=0x800004ac",  # mtval: the pc (QEMU: 0)
    "execute:": "tval=0x800004ac",
    "execute with MIE clear:": "traps=0",  # M-mode triggers need MIE (QEMU: no rule)
}


def test_trigger_guest_against_qemu() -> None:
    qemu = subprocess.run(
        ["qemu-system-riscv32", "-M", "virt", "-bios", "none", "-kernel", str(TRIGGERS_ELF),
         "-semihosting-config", "enable=on,target=native", "-nographic", "-monitor", "none"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    ours = subprocess.run([sys.executable, "-m", "emud", "run", "--semihosting",
                           str(TRIGGERS_ELF)], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)
    assert (ours.returncode, qemu.returncode) == (0, 0)
    mine, theirs = ours.stdout.splitlines(), (qemu.stderr + qemu.stdout).splitlines()
    assert len(mine) == len(theirs) == 26
    different = set()
    for line, reference in zip(mine, theirs, strict=True):
        label = next((k for k in EMUD_ONLY if line.startswith(k)), None)
        if label is None:
            assert line == reference
        else:
            assert EMUD_ONLY[label] in line and line != reference
            different.add(label)
    assert different == set(EMUD_ONLY)
