"""`info irq`: every interrupt source the hart sees, CLINT MSI/MTI included, by name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from conftest import boot
from emud.daemon import Daemon
from emud.machine import CLINT_BASE
from emud.monitor import Monitor

TIMEOUT = 10.0

# Three timer interrupts (mtimecmp moved on by 10 ticks each time) and one software one.
CLINT_GUEST = f"""
    .globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li s0, {CLINT_BASE:#x}
    li s2, {CLINT_BASE + 0x4000:#x}   # mtimecmp
    li s1, 0
    sw zero, 4(s2)       # mtimecmp = 10 ticks
    li t0, 10
    sw t0, 0(s2)
    li t0, 0x88               # MTIE | MSIE
    csrw mie, t0
    csrsi mstatus, 8
1:  wfi
    j 1b
    .balign 4
handler:
    csrr t0, mcause
    li t1, 0x80000003
    beq t0, t1, soft
    addi s1, s1, 1
    li t0, 3
    bge s1, t0, last
    lw t0, 0(s2)
    addi t0, t0, 10
    sw t0, 0(s2)
    mret
last:
    li t0, -1                 # no more timer interrupts; raise the software one
    sw t0, 4(s2)
    li t0, 1
    sw t0, 0(s0)
    mret
soft:
    sw zero, 0(s0)
    csrw mie, zero
    mret
"""


async def test_info_irq_counts_the_clint_lines_by_name(
        build_asm: Callable[[str], Path]) -> None:
    machine = boot(build_asm(CLINT_GUEST))
    daemon = Daemon(machine, start_paused=True, exit_on_poweroff=False)
    monitor = Monitor(daemon)
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.wait_for(monitor.execute_hmp("run-for 100us"), TIMEOUT)
        text = await asyncio.wait_for(monitor.execute_hmp("info irq"), TIMEOUT)
        stats = await monitor.execute_qmp("x-emud-query-irq", {})
    finally:
        daemon.quit()
        await asyncio.wait_for(task, TIMEOUT)
    clint = next(s for s in stats if s["controller"] == "clint")
    assert clint["counts"] == {0: 1, 1: 3}
    assert clint["names"] == {0: "clint.msip -> cpu.msi", 1: "clint.mtip -> cpu.mti"}
    assert "IRQ statistics for clint:\n 0: 1  clint.msip -> cpu.msi\n 1: 3  clint.mtip -> cpu.mti" \
        in text
    assert "IRQ statistics for plic:" in text
