"""U-mode: mret to U, ecall from U, CSR privilege, mcounteren, TW, MPP/MPRV, interrupts in U."""

from __future__ import annotations

import pytest

from conftest import IMAGES, boot, serial_text
from emud.clock import VirtualClock
from emud.cpu.csr import MTI, PRV_M, PRV_U, Cause
from emud.cpu.hart import VMSTATE_HART, Hart, HartState
from emud.daemon import Daemon
from emud.loader import load_elf
from emud.memory import AddressSpace, Ram
from emud.monitor import Monitor
from emud.vmstate import BOOL, UINT32, UINT64, Field, VMStateDescription, VMStateError
from tests.privrig import HANDLER, PROLOGUE, Program, assemble, make_hart, run_to, to_user


def run_user(body: str, translate: bool = False, mstatus_set: int = 0,
             regs: dict[int, int] | None = None) -> tuple[int, int, int, int]:
    program = assemble(to_user(body, mstatus_set))
    hart = make_hart(program, translate)
    for reg, value in (regs or {}).items():
        hart.x[reg] = value
    run_to(hart, program)
    assert hart.priv == PRV_M  # the trap brought it back
    return hart.x[18], hart.x[19], hart.x[20], hart.x[21]


@pytest.mark.parametrize("translate", [False, True])
def test_ecall_from_user_is_cause_8_and_saves_u_in_mpp(translate: bool) -> None:
    program = assemble(to_user("    li a0, 42\n    ecall", mstatus_set=0x80))
    hart = make_hart(program, translate)
    run_to(hart, program)
    cause, mepc, _, mstatus = hart.x[18:22]
    assert cause == Cause.ECALL_U and mepc == program.symbols["user"] + 4
    assert hart.x[10] == 42
    assert mstatus >> 11 & 3 == PRV_U  # MPP holds the privilege the trap came from
    assert mstatus & 0x80  # MPIE: MIE was 1 in U (set by mret from MPIE)


def test_mret_moves_mpie_to_mie_and_sets_mpp_to_u() -> None:
    program = assemble(PROLOGUE + """
    li t0, 0x1880            # MPP=M, MPIE=1
    csrs mstatus, t0
    la t0, after
    csrw mepc, t0
    mret
after:
    csrr s6, mstatus
    j done
""" + HANDLER)
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.priv == PRV_M
    assert hart.x[22] == 0x88  # MIE=1 from MPIE, MPIE=1, MPP=U


@pytest.mark.parametrize("csr", ["mstatus", "mscratch", "misa", "mcounteren", "pmpcfg0",
                                 "pmpaddr0", "mcycle", "mhartid"])
def test_user_access_to_a_machine_csr_is_illegal(csr: str) -> None:
    program = assemble(to_user(f"    csrr a0, {csr}\n    ecall"))
    hart = make_hart(program)
    run_to(hart, program)
    cause, mepc, mtval, _ = hart.x[18:22]
    word = int.from_bytes(program.image[mepc - 0x8000_0000:][:4], "little")
    assert (cause, mepc, mtval) == (Cause.ILLEGAL_INSN, program.symbols["user"], word)


@pytest.mark.parametrize(("csr", "bit"), [("cycle", 0), ("time", 1), ("instret", 2),
                                           ("cycleh", 0), ("timeh", 1), ("instreth", 2)])
@pytest.mark.parametrize("enabled", [False, True])
def test_mcounteren_gates_user_counter_reads(csr: str, bit: int, enabled: bool) -> None:
    program = assemble(to_user(f"    csrr a0, {csr}\n    ecall", setup=f"""
    li t0, {(1 << bit) if enabled else (7 & ~(1 << bit))}
    csrw mcounteren, t0
"""))
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[18] == (Cause.ECALL_U if enabled else Cause.ILLEGAL_INSN)


def test_user_cannot_write_a_user_counter() -> None:
    program = assemble(to_user("    csrw cycle, zero\n    ecall", setup="""
    li t0, 7
    csrw mcounteren, t0
"""))
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[18] == Cause.ILLEGAL_INSN  # read-only CSR


def test_mret_in_user_mode_is_illegal() -> None:
    cause, mepc, mtval, mstatus = run_user("    mret")
    assert (cause, mtval) == (Cause.ILLEGAL_INSN, 0x3020_0073)
    assert mstatus >> 11 & 3 == PRV_U


def test_wfi_in_user_mode_with_tw_is_illegal() -> None:
    cause, _, mtval, _ = run_user("    wfi\n    ecall", mstatus_set=1 << 21)
    assert (cause, mtval) == (Cause.ILLEGAL_INSN, 0x1050_0073)


def test_wfi_in_user_mode_without_tw_waits() -> None:
    program = assemble(to_user("    wfi\n    ecall"))
    hart = make_hart(program)
    hart.run(200)
    assert hart.waiting and hart.priv == PRV_U  # no S-mode: U may wait unless TW is set
    assert hart.pc == program.symbols["user"] + 4


@pytest.mark.parametrize("translate", [False, True])
def test_machine_interrupts_are_taken_in_user_mode_whatever_mie(translate: bool) -> None:
    program = assemble(to_user("    addi a0, a0, 1\n    j user", setup="""
    li t0, 0x80
    csrw mie, t0             # MTIE
    li t0, 0x88
    csrc mstatus, t0         # MIE=0, MPIE=0 (and MPP=U): U runs with MIE=0
"""))
    hart = make_hart(program, translate)
    hart.run(500)
    assert hart.priv == PRV_U and hart.x[10] > 0
    hart.set_irq(MTI, True)
    run_to(hart, program)
    cause, _, _, mstatus = hart.x[18:22]
    assert cause == (1 << 31) | MTI
    assert mstatus >> 11 & 3 == PRV_U and not mstatus & 0x8


def test_mpp_keeps_its_value_when_written_with_an_unimplemented_mode() -> None:
    program = assemble(PROLOGUE + """
    li t0, 0x1800
    csrc mstatus, t0         # MPP=U
    li t0, 0x0800
    csrs mstatus, t0         # MPP=1 (S): not implemented
    csrr s6, mstatus
    li t0, 0x1800
    csrw mstatus, t0         # MPP=M
    li t0, 0x1000
    csrw mstatus, t0         # MPP=2: reserved
    csrr s7, mstatus
    j done
""" + HANDLER)
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[22] >> 11 & 3 == PRV_U and hart.x[23] >> 11 & 3 == PRV_M


def test_mret_to_user_clears_mprv_and_to_machine_keeps_it() -> None:
    program = assemble(PROLOGUE + """
    li t0, 0x21800           # MPRV, MPP=M
    csrs mstatus, t0
    la t0, m_again
    csrw mepc, t0
    mret
m_again:
    csrr s6, mstatus
    li t0, 0x20000
    csrs mstatus, t0         # MPRV again, MPP is U now
    la t0, user
    csrw mepc, t0
    mret
user:
    ecall
""" + HANDLER)
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[22] & 0x20000  # mret to M keeps MPRV
    assert hart.x[18] == Cause.ECALL_U and not hart.x[21] & 0x20000



# --- snapshots -----------------------------------------------------------------------

# The cpu section as the M-only hart (version 1) wrote it, field for field.
CPU_V1 = VMStateDescription(
    "cpu", 1, 1,
    [Field("x", UINT32, num=32), Field("pc", UINT32), Field("mstatus", UINT32),
     Field("mie", UINT32), Field("mip", UINT32), Field("mtvec", UINT32),
     Field("mscratch", UINT32), Field("mepc", UINT32), Field("mcause", UINT32),
     Field("mtval", UINT32), Field("cycle_offset", UINT64), Field("instret_offset", UINT64),
     Field("reservation_valid", BOOL), Field("reservation_addr", UINT32),
     Field("waiting", BOOL)],
)

USER_LOOP = to_user("""
    la a1, guarded
loop:
    addi a0, a0, 1
    j loop
.balign 8
guarded:
    .word 0
""")


def user_hart_with_pmp() -> tuple[Hart, Program]:
    """A hart spinning in U-mode, with entry 0 denying it the word `guarded`."""
    program = assemble(USER_LOOP)
    hart = make_hart(program)
    hart.run(300)
    assert hart.priv == PRV_U
    hart.pmpaddr[0] = program.symbols["guarded"] >> 2
    hart.pmpcfg[0] = NA4_NO_ACCESS
    hart.mcounteren = 5
    hart.pmp_changed()
    return hart, program


NA4_NO_ACCESS = 2 << 3


def test_a_version_1_snapshot_loads_as_an_m_mode_hart_without_pmp() -> None:
    old = Hart(AddressSpace(Ram(0x8000_0000, 64 * 1024)), VirtualClock())
    old.x[5], old.pc, old.mstatus, old.mscratch = 55, 0x8000_0010, 0x1888, 0xABCD
    stream = CPU_V1.save(HartState(old))
    hart, _ = user_hart_with_pmp()
    VMSTATE_HART.load(HartState(hart), stream, 1)
    assert (hart.x[5], hart.pc, hart.mstatus, hart.mscratch) == (55, 0x8000_0010, 0x1888, 0xABCD)
    assert hart.priv == PRV_M and hart.mcounteren == 0
    assert hart.pmpcfg == [0] * 16 and hart.pmpaddr == [0] * 16
    assert not hart.checked and hart.pmp_rules == ()


def test_a_snapshot_carries_priv_mcounteren_and_pmp() -> None:
    hart, program = user_hart_with_pmp()
    stream = VMSTATE_HART.save(HartState(hart))
    fresh = make_hart(program)
    VMSTATE_HART.load(HartState(fresh), stream, 2)
    assert fresh.priv == PRV_U and fresh.mcounteren == 5 and fresh.checked
    assert fresh.pmpcfg == hart.pmpcfg and fresh.pmpaddr == hart.pmpaddr
    fresh.x[11] = program.symbols["guarded"]
    fresh.bus.write_bytes(fresh.pc, bytes.fromhex("8c41"))  # c.lw a1, 0(a1): denied
    fresh.run(1)
    assert (fresh.mcause, fresh.mtval) == (Cause.LOAD_ACCESS, program.symbols["guarded"])


def test_a_snapshot_with_an_unimplemented_privilege_is_refused() -> None:
    hart, _ = user_hart_with_pmp()
    hart.priv = 1
    stream = VMSTATE_HART.save(HartState(hart))
    fresh, _ = user_hart_with_pmp()
    with pytest.raises(VMStateError, match="privilege level 1"):
        VMSTATE_HART.load(HartState(fresh), stream, 2)
    assert fresh.priv == PRV_U  # nothing applied


# --- the utasks guest ----------------------------------------------------------------

UTASKS_OUTPUT = """\
kernel: starting 2 tasks in U-mode
spinner: waiting for the worker, without yielding
worker: hello from U-mode
worker: cycle counts in U-mode
worker: reading mstatus trapped
spinner: the worker ran meanwhile
kernel: all tasks exited; preempted by the timer: yes
utasks: all ok
"""


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_utasks_guest_runs_tasks_in_user_mode_with_timer_preemption(accel: str) -> None:
    """The spinner never yields, so the worker only runs because the timer preempts."""
    machine = boot(IMAGES / "utasks.elf", accel=accel)  # type: ignore[arg-type]
    assert machine.run_until_poweroff(max_insns=5_000_000) == 0
    assert serial_text(machine) == UTASKS_OUTPUT


@pytest.mark.parametrize("enabled", [False, True])
def test_hpm_counters_read_zero_and_are_gated_for_user(enabled: bool) -> None:
    program = assemble(to_user("    csrr a0, hpmcounter3\n    ecall", setup=f"""
    li t0, -1
    csrw mhpmcounter31, t0   # hardwired to zero: ignored
    csrr s6, mhpmcounter31
    csrw mhpmevent3, t0
    csrr s7, mhpmevent3
    li t0, {1 << 3 if enabled else ~(1 << 3) & 0xFFFF_FFFF}
    csrw mcounteren, t0
    li a0, 77
"""))
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[22] == 0 and hart.x[23] == 0
    assert hart.x[18] == (Cause.ECALL_U if enabled else Cause.ILLEGAL_INSN)
    assert hart.x[10] == (0 if enabled else 77)


def test_info_registers_shows_the_privilege_level() -> None:
    machine = boot(IMAGES / "utasks.elf")
    monitor = Monitor(Daemon(machine, start_paused=True))
    assert " priv     M" in monitor.execute_hmp_now("info registers").splitlines()
    symbols = load_elf(IMAGES / "utasks.elf").symbols
    while machine.hart.pc != symbols["worker"]:  # the worker task, in U-mode
        machine.hart.run(1)
    assert " priv     U" in monitor.execute_hmp_now("info registers").splitlines()


def test_reset_returns_to_machine_mode_without_pmp_and_drops_decoded_code() -> None:
    hart, program = user_hart_with_pmp()
    hart.reset(0x8000_0000)
    assert hart.priv == PRV_M and hart.mcounteren == 0 and not hart.checked
    assert hart.pmpcfg == [0] * 16 and hart.pmpaddr == [0] * 16 and hart.pmp_rules == ()
    assert not any(hart.decoded(pc) for pc in range(0x8000_0000, 0x8000_0100, 2))
