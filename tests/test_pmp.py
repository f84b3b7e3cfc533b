"""PMP: the pure decision functions, then the hart enforcing them on loads, stores, AMOs
and fetches, from U and M (MPRV, locks), with the translator and predecoded code."""

from __future__ import annotations

import pytest

from conftest import IMAGES, boot, serial_text
from emud.cpu import pmp
from emud.cpu.csr import PRV_M, Cause
from emud.cpu.pmp import L, R, Region, W, X
from emud.loader import load_elf
from tests.privrig import (
    HANDLER,
    PROLOGUE,
    TRAP_VECTOR,
    assemble,
    enter_user,
    make_hart,
    run_to,
    to_user,
)

NA4, NAPOT, TOR = pmp.NA4 << 3, pmp.NAPOT << 3, pmp.TOR << 3


# --- pure functions ------------------------------------------------------------------


@pytest.mark.parametrize(("addr", "lo", "hi"), [
    (0x2000_0000, 0x8000_0000, 0x8000_0008),  # no trailing one: 8 bytes
    (0x2000_0001, 0x8000_0000, 0x8000_0010),
    (0x2000_03FF, 0x8000_0000, 0x8000_2000),  # ten ones: 8 KiB
    (0x1FFF_FFFF, 0x0, 0x1_0000_0000),        # 4 GiB
    (0xFFFF_FFFF, 0x0, 0x8_0000_0000),        # all ones: the whole 34-bit space
])
def test_napot_ranges(addr: int, lo: int, hi: int) -> None:
    assert pmp.napot_range(addr) == (lo, hi)


def test_region_decoding() -> None:
    cfg = [TOR | R, NA4 | W, NAPOT | X | L, 0, TOR | R] + [0] * 11
    addr = [0x2000_0100, 0x2000_0200, 0x2000_0301, 0x2000_0400, 0x2000_0000] + [0] * 11
    assert pmp.regions(cfg, addr) == (
        Region(0, 0x8000_0400, R, False),  # TOR entry 0 starts at 0
        Region(0x8000_0800, 0x8000_0804, W, False),
        Region(0x8000_0C00, 0x8000_0C10, X, True),
        # entry 3 is OFF; entry 4, TOR from 0x80001000 down to 0x80000000, is empty
    )


RULES = (Region(0x1000, 0x1010, R, False), Region(0x1000, 0x2000, R | W, False),
         Region(0x3000, 0x3004, 0, True))


@pytest.mark.parametrize(("addr", "size", "access", "machine", "ok"), [
    (0x1000, 4, R, False, True),
    (0x1000, 4, W, False, False),  # entry 0 decides, though entry 1 would allow
    (0x1010, 4, W, False, True),   # past entry 0: entry 1
    (0x100E, 4, R, False, False),  # straddles entry 0's end: partial match fails
    (0x0FFE, 4, R, True, False),   # partial match fails in M-mode too
    (0x5000, 4, R, False, False),  # no match: U denied
    (0x5000, 4, R, True, True),    # no match: M allowed
    (0x1000, 4, W, True, True),    # unlocked entries do not bind M
    (0x3000, 4, R, True, False),   # a locked one does
    (0x3000, 2, X, True, False),
])
def test_allowed(addr: int, size: int, access: int, machine: bool, ok: bool) -> None:
    assert pmp.allowed(RULES, addr, size, access, machine) is ok


def test_cfg_write_keeps_locked_entries_and_reserved_bits_read_zero() -> None:
    cfg = [0, L | R, 0, 0] + [0] * 12
    new = pmp.cfg_write(cfg, 0, 0xFFFF_FFFF)
    assert new[:4] == [0x9F, L | R, 0x9F, 0x9F]  # bits 5 and 6 are reserved
    assert pmp.cfg_word(new, 0) == 0x9F9F_819F


def test_addr_locks() -> None:
    cfg = [0] * 16
    cfg[3] = L | NA4
    cfg[6] = L | TOR
    cfg[9] = L | NAPOT
    assert not pmp.addr_writable(cfg, 3)  # its own lock
    assert not pmp.addr_writable(cfg, 5) and not pmp.addr_writable(cfg, 6)  # locked TOR: both
    assert pmp.addr_writable(cfg, 8) and not pmp.addr_writable(cfg, 9)  # NAPOT: only its own
    assert pmp.addr_writable(cfg, 2) and pmp.addr_writable(cfg, 15)


# --- the hart ------------------------------------------------------------------------

# Entry 0 (set by each test through s0/s1 = pmpaddr0/pmpcfg0) guards `guarded`; entry 15
# gives U the rest.  The handler records mcause/mepc/mtval in s2..s4.
GUARDED = """
.balign 64
guarded:
    .word 0x12345678
    addi a0, a0, 7
    ecall
.balign 64
"""
GUARD = """
    csrw pmpaddr0, s0
    csrw pmpcfg0, s1
    la a1, guarded
"""


def run_guarded(access: str, cfg: int, *, translate: bool = False, mstatus: int = 0,
                size: int = 8) -> tuple[int, int, int, dict[str, int]]:
    """Run `access` at `user` (mret there with MPP=U, then `mstatus` set: MPP/MPRV)."""
    program = assemble(PROLOGUE + GUARD + enter_user("user", mstatus) + f"""
user:
    {access}
    ecall
""" + HANDLER + GUARDED)
    guarded = program.symbols["guarded"]
    hart = make_hart(program, translate)
    hart.x[8] = (guarded >> 2) | (size // 8 - 1)
    hart.x[9] = NAPOT | cfg
    run_to(hart, program)
    return hart.x[18], hart.x[19], hart.x[20], program.symbols


@pytest.mark.parametrize("translate", [False, True])
@pytest.mark.parametrize(("access", "cfg", "cause"), [
    ("lw a0, 0(a1)", R, Cause.ECALL_U),
    ("lw a0, 0(a1)", W | X, Cause.LOAD_ACCESS),
    ("lbu a0, 3(a1)", 0, Cause.LOAD_ACCESS),
    ("sw a0, 4(a1)", R | X, Cause.STORE_ACCESS),
    ("sh a0, 2(a1)", R | W, Cause.ECALL_U),
    ("amoadd.w a0, a0, (a1)", R, Cause.STORE_ACCESS),  # an AMO needs W
    ("amoadd.w a0, a0, (a1)", W, Cause.STORE_ACCESS),  # ... and R, reported as a store
    ("lr.w a0, (a1)", W | X, Cause.LOAD_ACCESS),
    ("sc.w a0, a0, (a1)", R, Cause.ECALL_U),  # no reservation: nothing is stored
])
def test_user_data_access(access: str, cfg: int, cause: int, translate: bool) -> None:
    got, mepc, mtval, sym = run_guarded(access, cfg, translate=translate)
    assert got == cause
    if cause != Cause.ECALL_U:
        offset = int(access.split(",")[-1].split("(")[0].strip() or 0) if "(" in access else 0
        assert (mepc, mtval) == (sym["user"], sym["guarded"] + offset)


@pytest.mark.parametrize("translate", [False, True])
def test_user_fetch_needs_x(translate: bool) -> None:
    cause, mepc, mtval, sym = run_guarded("jalr a1, 4(a1)", R | W, translate=translate,
                                          size=16)
    assert (cause, mepc, mtval) == (Cause.INSN_ACCESS, sym["guarded"] + 4, sym["guarded"] + 4)
    cause, mepc, _, sym = run_guarded("jalr a1, 4(a1)", X, translate=translate, size=16)
    assert (cause, mepc) == (Cause.ECALL_U, sym["guarded"] + 6)  # after a c.addi


def test_fetch_of_a_straddling_instruction_checks_its_second_half() -> None:
    """A 32-bit instruction whose second half lies past the X region faults at that half."""
    program = assemble(TRAP_VECTOR + """
    la t0, region
    srli t0, t0, 2
    csrw pmpaddr0, t0
    addi t0, t0, 2
    csrw pmpaddr1, t0
    li t0, 0x0d08            # entry 0 OFF (a TOR base), entry 1 TOR X: [region, region+8)
    csrw pmpcfg0, t0
""" + enter_user("region") + HANDLER + """
.balign 64
region:
    .option push
    .option norvc
    nop
    .option rvc
    c.nop
    .option norvc
    addi a0, a0, 1           # its second half is at region+8, outside
    .option pop
""")
    hart = make_hart(program)
    run_to(hart, program)
    region = program.symbols["region"]
    assert hart.x[18:21] == [Cause.INSN_ACCESS, region + 6, region + 8]


def test_no_matching_entry_denies_user_and_allows_machine() -> None:
    program = assemble(TRAP_VECTOR + """
    lw a0, 0(sp)             # M: no entry, allowed
""" + enter_user() + "user:\n    nop\n" + HANDLER)
    hart = make_hart(program)
    hart.x[2] = 0x8000_1000
    run_to(hart, program)
    assert hart.x[18] == Cause.INSN_ACCESS and hart.x[20] == program.symbols["user"]


@pytest.mark.parametrize("translate", [False, True])
def test_mprv_checks_machine_loads_with_mpp(translate: bool) -> None:
    # M-mode runs `guarded`-reading code at `user` (mret to M keeps MPRV, with MPP=U)...
    cause, mepc, mtval, sym = run_guarded("lw a0, 0(a1)", X, translate=translate,
                                          mstatus=0x2_1800)
    # mret to M set MPP to U: the load is checked as U's, and denied
    assert (cause, mepc, mtval) == (Cause.LOAD_ACCESS, sym["user"], sym["guarded"])


@pytest.mark.parametrize("translate", [False, True])
def test_a_locked_entry_binds_machine_mode(translate: bool) -> None:
    cause, _, mtval, sym = run_guarded("sw a0, 0(a1)", L | R | X, translate=translate,
                                       mstatus=0x1800)
    assert (cause, mtval) == (Cause.STORE_ACCESS, sym["guarded"])
    cause, _, _, _ = run_guarded("sw a0, 0(a1)", R | X, translate=translate, mstatus=0x1800)
    assert cause == Cause.ECALL_M  # unlocked: M ignores it


@pytest.mark.parametrize("translate", [False, True])
def test_code_hot_in_machine_mode_is_refetched_under_user_rules(translate: bool) -> None:
    """`shared` is decoded (and translated) in M; U may not execute it: the M-mode
    code must not be reused for U."""
    program = assemble(to_user("    jal shared\n    ecall", setup="""
    li s1, 0
loop:
    la t1, shared
    jalr t1                  # an indirect call: `shared` gets a region of its own
    addi s1, s1, 1
    li t0, 40
    blt s1, t0, loop
    la t0, shared
    srli t0, t0, 2
    csrw pmpaddr0, t0
    li t0, 0x13              # NA4, RW: not X
    csrw pmpcfg0, t0
""", after="""
.balign 4
shared:
    addi a0, a0, 1
    ret
"""))
    hart = make_hart(program, translate)
    run_to(hart, program)
    assert hart.x[10] == 40
    assert hart.x[18:21:2] == [Cause.INSN_ACCESS, program.symbols["shared"]]


def test_pmp_change_drops_code_fetched_under_the_old_rules() -> None:
    """U code runs, M takes X away from it with an ecall, U jumps back: fault."""
    program = assemble(PROLOGUE + enter_user() + """
user:
    addi a0, a0, 1
    ecall
    j user
.balign 4
trap:
    csrr s2, mcause
    csrr s4, mtval
    bnez s6, done
    li s6, 1
    la t0, user              # first ecall: deny X on `user` and return
    srli t0, t0, 2
    csrw pmpaddr0, t0
    li t0, 0x13
    csrw pmpcfg0, t0
    csrr t0, mepc
    addi t0, t0, 4
    csrw mepc, t0
    mret
done:
    j done
""")
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[10] == 1
    assert hart.x[18:21:2] == [Cause.INSN_ACCESS, program.symbols["user"]]


def test_locked_entries_ignore_writes() -> None:
    program = assemble("""
    li t0, 0x2000
    csrw pmpaddr1, t0
    li t0, 0x8900            # entry 1: locked TOR, R
    csrw pmpcfg0, t0
    li t0, 0x1111
    csrw pmpaddr0, t0        # the base of a locked TOR: frozen
    csrw pmpaddr1, t0        # locked: frozen
    csrw pmpaddr2, t0
    li t0, -1
    csrw pmpcfg0, t0         # entry 1 keeps its byte
    csrr s2, pmpcfg0
    csrr s3, pmpaddr0
    csrr s4, pmpaddr1
    csrr s5, pmpaddr2
done:
    j done
""")
    hart = make_hart(program)
    run_to(hart, program)
    assert hart.x[18:22] == [0x9F9F_899F, 0, 0x2000, 0x1111]
    assert hart.priv == PRV_M and hart.checked  # a locked entry makes M checked


# --- the pmp guest -------------------------------------------------------------------


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_pmp_guest_kills_the_task_that_writes_the_kernels_secret(accel: str) -> None:
    machine = boot(IMAGES / "pmp.elf", accel=accel)  # type: ignore[arg-type]
    assert machine.run_until_poweroff(max_insns=2_000_000) == 0
    secret = load_elf(IMAGES / "pmp.elf").symbols["secret"]
    assert serial_text(machine).splitlines() == [
        "kernel: running a task with the secret protected by PMP",
        "task: reading the public word",
        "task: writing the kernel's secret",
        f"kernel: task 'intruder' killed: store access fault at 0x{secret + 12:08x}"
        " (the kernel's secret)",
        "kernel: the secret is intact",
        "pmp: all ok",
    ]
