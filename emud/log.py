"""QEMU-style execution logs: `-d ITEM[,ITEM...]`, `-D FILE`, HMP `log` and `logfile`.

The items keep QEMU's names and, where QEMU has one, its line format, so a log
of emud reads like one of `qemu-system-riscv32 -d ...`:

- `in_asm`: each block when it is decoded (interpreter) or translated (translate
  accelerator), disassembled.  A block is logged once per distinct code: the same
  pc with other instruction words (self-modifying code) is logged again.
- `exec`, `cpu`: each block as it starts to run, with pc and icount (`exec`) or the
  register file (`cpu`).  These need every block boundary, so while either is on
  the hart runs under the interpreter, one instruction at a time (`run_blocks`).
- `int`: every trap and interrupt, in riscv_cpu_do_interrupt's shape plus icount
  and virtual time.  Traps always go through `Hart.enter_trap`, so this works
  with both accelerators.
- `guest_errors`: unmapped accesses, invalid device register accesses, writes to
  read-only registers, illegal instructions.
- `unimp`: device features the model does not implement.

When every item is off each hook is one attribute test on a cold path (decode
miss, trap entry, bus error, run-slice start), so the hot loops are untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from emud.cpu.csr import INTERRUPT_BIT, Cause
from emud.cpu.decode import expand_compressed
from emud.cpu.disasm import ABI_NAMES, disassemble
from emud.hostfiles import open_private

if TYPE_CHECKING:
    from emud.cpu.hart import Hart

# Item name -> what it shows (`-d help`), in QEMU's order.
ITEMS: dict[str, str] = {
    "in_asm": "guest code of each block as it is decoded or translated, disassembled",
    "exec": "each block as it starts to run: pc and icount (forces the interpreter)",
    "cpu": "the register file at each block start (forces the interpreter)",
    "int": "every trap and interrupt: cause, epc, tval, icount, virtual time",
    "guest_errors": "guest mistakes: unmapped or invalid accesses, read-only "
                    "registers, illegal instructions",
    "unimp": "device features the model does not implement",
}

# The current state: one boolean per item (hooks test these), the output, symbols.
in_asm = exec_ = cpu = int_ = guest_errors = unimp = False
per_block = False  # exec or cpu: Hart._run hands the slice to run_blocks
_out: IO[str] = sys.stderr
_path: str | None = None


def _no_symbols(addr: int) -> str | None:
    return None


symbolize: Callable[[int], str | None] = _no_symbols  # the loaded image's, set by the CLI

# Observers of trap entry (the `int` and `guest_errors` items, the timeline).  Hart.enter_trap
# calls `trap` only when the list is not empty.
TrapHook = Callable[["Hart", int, int, int], None]
trap_hooks: list[TrapHook] = []

# QEMU's names of RISC-V exception and interrupt causes (desc= in the int log).
EXCEPTION_NAMES = [
    "misaligned_fetch", "fault_fetch", "illegal_instruction", "breakpoint",
    "misaligned_load", "fault_load", "misaligned_store", "fault_store",
    "user_ecall", "supervisor_ecall", "hypervisor_ecall", "machine_ecall",
    "exec_page_fault", "load_page_fault", "reserved", "store_page_fault",
]
INTERRUPT_NAMES = [
    "u_software", "s_software", "vs_software", "m_software",
    "u_timer", "s_timer", "vs_timer", "m_timer",
    "u_external", "s_external", "vs_external", "m_external",
]
_BLOCK_END = {0x63, 0x6F, 0x67, 0x73}  # branch, jal, jalr, system: end a block


def cause_name(cause: int) -> str:
    """QEMU's desc= for an mcause value."""
    code = cause & ~INTERRUPT_BIT
    names = INTERRUPT_NAMES if cause & INTERRUPT_BIT else EXCEPTION_NAMES
    return names[code] if code < len(names) else f"cause_{code}"


# --- configuration ------------------------------------------------------------------


def parse_items(spec: str) -> set[str]:
    """A `-d` argument: comma-separated item names, `none`, or `all`.

    Raises ValueError naming the first unknown item (QEMU: 'Invalid -d option')."""
    items: set[str] = set()
    for word in (w.strip() for w in spec.split(",")):
        if word == "all":
            items |= set(ITEMS)
        elif word == "none" or not word:
            continue
        elif word in ITEMS:
            items.add(word)
        else:
            raise ValueError(f"unknown log item {word!r} (see -d help)")
    return items


def help_text() -> str:
    lines = ["Log items (-d ITEM[,ITEM...], monitor 'log ITEMS'):"]
    lines += [f"{name:<13} {text}" for name, text in ITEMS.items()]
    lines.append(f"{'none':<13} turn every item off")
    lines.append(f"{'all':<13} turn every item on")
    return "\n".join(lines)


def set_items(items: set[str]) -> None:
    """Turn on exactly these items (the others off)."""
    global in_asm, exec_, cpu, int_, guest_errors, unimp, per_block
    in_asm, exec_, cpu = "in_asm" in items, "exec" in items, "cpu" in items
    int_, guest_errors, unimp = "int" in items, "guest_errors" in items, "unimp" in items
    per_block = exec_ or cpu
    for hook in (_trap_int, _trap_guest_error):
        if hook in trap_hooks:
            trap_hooks.remove(hook)
    if int_:
        trap_hooks.append(_trap_int)
    if guest_errors:
        trap_hooks.append(_trap_guest_error)
    _blocks_seen.clear()
    global _fall
    _fall = -1


def enabled_items() -> list[str]:
    flags = {"in_asm": in_asm, "exec": exec_, "cpu": cpu, "int": int_,
             "guest_errors": guest_errors, "unimp": unimp}
    return [name for name in ITEMS if flags[name]]


def set_file(path: str | None) -> None:
    """Send the log to `path` (created private, truncated), or back to stderr (None).

    The file is line-buffered: what was logged is in it even if emud is killed."""
    global _out, _path
    new: IO[str] = sys.stderr
    if path is not None:
        new = os.fdopen(open_private(path), "w", buffering=1, encoding="utf-8")
    if _out is not sys.stderr:
        _out.close()
    _out, _path = new, path


def log_file() -> str | None:
    return _path


def write(text: str) -> None:
    with contextlib.suppress(ValueError):  # closed under us at exit: nothing to log to
        _out.write(text)


# --- guest_errors and unimp ------------------------------------------------------------


def guest_error(text: str) -> None:
    if guest_errors:
        write(text + "\n")


def unimplemented(text: str) -> None:
    if unimp:
        write(text + "\n")


# --- traps (int, and illegal instructions for guest_errors) --------------------------------


def trap(hart: Hart, cause: int, tval: int, pc: int) -> None:
    for hook in list(trap_hooks):
        hook(hart, cause, tval, pc)


def int_line(hart: Hart, cause: int, tval: int, pc: int) -> str:
    clock = hart.clock
    return (f"riscv_cpu_do_interrupt: hart:{hart.hartid}, async:{1 if cause & INTERRUPT_BIT else 0}"
            f", cause:{cause:08x}, epc:0x{pc:08x}, tval:0x{tval:08x}, desc={cause_name(cause)}"
            f", icount:{clock.icount}, time:{clock.now_ns}ns")


def _trap_int(hart: Hart, cause: int, tval: int, pc: int) -> None:
    write(int_line(hart, cause, tval, pc) + "\n")


_ACCESS_FAULTS = {Cause.INSN_ACCESS: "instruction fetch from", Cause.LOAD_ACCESS: "load from",
                  Cause.STORE_ACCESS: "store to"}


def _trap_guest_error(hart: Hart, cause: int, tval: int, pc: int) -> None:
    """Illegal instructions and accesses to unmapped addresses, seen as the traps they are
    (every guest access fault ends here, whichever accelerator ran the access)."""
    if cause == Cause.ILLEGAL_INSN:
        write(f"cpu: illegal instruction 0x{tval:08x} at pc 0x{pc:08x}\n")
    elif cause in _ACCESS_FAULTS and hart.bus.find(tval) is None \
            and not hart.bus.ram.contains(tval, 1):
        write(f"cpu: {_ACCESS_FAULTS[Cause(cause)]} unmapped address 0x{tval:08x} "
              f"at pc 0x{pc:08x}\n")


# --- in_asm ----------------------------------------------------------------------------

_blocks_seen: dict[int, int] = {}  # pc -> instruction word of every instruction logged


def _fetch(hart: Hart, pc: int) -> tuple[int, int, int] | None:
    """(raw, expanded word, length) of the instruction at pc in RAM, None outside RAM."""
    ram = hart.bus.ram
    if not ram.contains(pc, 2):
        return None
    low = ram.u16[(pc - ram.base) >> 1]
    if low & 3 != 3:
        return low, expand_compressed(low), 2
    if not ram.contains(pc, 4):
        return None
    word = low | ram.u16[(pc + 2 - ram.base) >> 1] << 16
    return word, word, 4


def block_at(hart: Hart, pc: int, limit: int = 64) -> list[tuple[int, int, int]]:
    """The straight-line block at pc: (pc, raw, length) up to its first control transfer."""
    out: list[tuple[int, int, int]] = []
    while len(out) < limit and (insn := _fetch(hart, pc)) is not None:
        raw, word, length = insn
        out.append((pc, raw, length))
        if word & 0x7F in _BLOCK_END:
            break
        pc = (pc + length) & 0xFFFF_FFFF
    return out


def format_insns(hart: Hart, insns: list[tuple[int, int, int]], heading: str = "") -> str:
    """QEMU's in_asm block: a rule, `IN:` and the symbol, the privilege, one line each."""
    first = insns[0][0] if insns else 0
    name = heading or symbolize(first) or ""
    lines = ["----------------", f"IN: {name}", f"Priv: {hart.priv}; Virt: 0"]
    for pc, raw, length in insns:
        code = f"{raw:08x}" if length == 4 else f"{raw:04x}    "
        lines.append(f"0x{pc:08x}:  {code}          {disassemble(raw, pc)}")
    return "\n".join(lines) + "\n\n"


def decoded(hart: Hart, pc: int) -> None:
    """The interpreter decoded the instruction at pc: log the block from there, unless that
    instruction was logged already as part of a block (the interpreter decodes one
    instruction at a time; code rewritten since is logged again)."""
    insns = block_at(hart, pc)
    if insns and _blocks_seen.get(pc) != insns[0][1]:
        _blocks_seen.update((at, raw) for at, raw, _ in insns)
        write(format_insns(hart, insns))


def translated(hart: Hart, entry: int, pcs: list[int]) -> None:
    """The translator compiled a region: its instructions, under one heading."""
    insns = [(pc, insn[0], insn[2]) for pc in sorted(pcs)
             if (insn := _fetch(hart, pc)) is not None]
    if insns:
        name = symbolize(entry) or ""
        write(format_insns(hart, insns, f"region 0x{entry:08x} {name}".rstrip()))


# --- exec and cpu: the per-block run loop ---------------------------------------------------

_fall = -1  # the pc that continues the current block; any other pc starts a new one


def exec_line(hart: Hart, pc: int) -> str:
    name = symbolize(pc) or ""
    return (f"Trace {hart.hartid}: icount={hart.clock.icount} time={hart.clock.now_ns}ns "
            f"[00000000/{pc:08x}/{hart.priv:08x}/00000000] {name}").rstrip()


def cpu_dump(hart: Hart) -> str:
    """The register file as QEMU's riscv cpu dump prints it (the M-mode CSRs emud has)."""
    csrs = [("pc", hart.pc), ("mhartid", hart.hartid), ("mstatus", hart.mstatus),
            ("mip", hart.mip), ("mie", hart.mie), ("mtvec", hart.mtvec), ("mepc", hart.mepc),
            ("mcause", hart.mcause), ("mtval", hart.mtval), ("mscratch", hart.mscratch)]
    lines = [f" {name:<8} {value:08x}" for name, value in csrs]
    regs = [f" {f'x{n}/{ABI_NAMES[n]}':<8} {hart.x[n]:08x}" for n in range(32)]
    lines += ["".join(regs[i:i + 4]) for i in range(0, 32, 4)]
    return "\n".join(lines) + "\n"


def _block_start(hart: Hart, pc: int) -> None:
    if exec_:
        write(exec_line(hart, pc) + "\n")
    if cpu:
        write(cpu_dump(hart))


def run_blocks(hart: Hart, budget: int) -> int:
    """Hart.interpret's contract, one instruction at a time, logging each block start.

    Interrupts are taken where the interpreter takes them (before an instruction), so
    a logged run retires the same instructions at the same icounts as an unlogged one.
    """
    global _fall
    done = 0
    while done < budget and not hart.stop_requested and not hart.waiting:
        irq = hart._deliverable_irq()
        if irq is not None:
            hart.pc = hart.enter_trap(INTERRUPT_BIT | irq, 0, hart.pc)
        pc = hart.pc
        if pc != _fall:
            _block_start(hart, pc)
        step = hart.interpret(1)
        done += step
        insn = _fetch(hart, pc)
        _fall = -1 if insn is None or insn[1] & 0x7F in _BLOCK_END else pc + insn[2]
        if not step or hart.debug_stop is not None:
            break
    return done
