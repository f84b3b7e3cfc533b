"""`-d` log items: each item's content for a guest that provokes it, both accelerators."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_qmp_cli import TIMEOUT as QMP_TIMEOUT
from test_qmp_cli import qmp_daemon

from conftest import IMAGES, ROOT, boot, serial_text
from emud import log
from emud.chardev import RingBackend
from emud.clock import VirtualClock
from emud.cpu.disasm import disassemble
from emud.device import DeviceContext
from emud.hw.hpet import HPET
from emud.loader import load_elf
from emud.machine import HPET_BASE, UART0_BASE, Machine

TIMEOUT = 60
INT_LINE = re.compile(r"riscv_cpu_do_interrupt: hart:0, async:(\d), cause:([0-9a-f]{8}), "
                      r"epc:0x([0-9a-f]{8}), tval:0x([0-9a-f]{8}), desc=(\w+), "
                      r"icount:(\d+), time:(\d+)ns")


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Turn items on in-process, logging to a file; the callable returns what was logged."""
    path = tmp_path / "emud.log"

    def start(items: str) -> str:
        log.set_file(str(path))
        log.set_items(log.parse_items(items))
        return str(path)

    try:
        yield start
    finally:
        log.set_items(set())
        log.set_file(None)
        log.symbolize = log._no_symbols


def boot_accel(image: Path, accel: str) -> Machine:
    machine = Machine(RingBackend(), accel=accel)
    machine.load(load_elf(image))
    return machine


def emud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emud", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_help_lists_every_item_and_bad_items_are_one_line_errors() -> None:
    result = emud("run", "-d", "help")
    assert result.returncode == 0
    for item in ("in_asm", "exec", "cpu", "int", "guest_errors", "unimp"):
        assert re.search(rf"^{item}\s+\S", result.stdout, re.M), item
    bad = emud("run", str(IMAGES / "hello.elf"), "-d", "int,bogus")
    assert bad.returncode == 2
    assert "unknown log item 'bogus' (see -d help)" in bad.stderr


def test_int_and_guest_errors_on_the_traps_image(tmp_path: Path) -> None:
    texts = []
    for accel in ("interp", "translate"):
        logfile = tmp_path / f"traps-{accel}.log"
        result = emud("run", str(IMAGES / "traps.elf"), "--accel", accel,
                      "-d", "int,guest_errors", "-D", str(logfile))
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
        texts.append(logfile.read_text())
    # The same traps at the same icounts, whichever accelerator ran the guest.
    assert texts[0] == texts[1]
    text = texts[0]
    traps = [m.groups() for m in INT_LINE.finditer(text)]
    descs = [t[4] for t in traps]
    for desc in ("machine_ecall", "illegal_instruction", "misaligned_load", "misaligned_store",
                 "breakpoint", "fault_load", "fault_store"):
        assert desc in descs
    illegal = next(t for t in traps if t[4] == "illegal_instruction")
    assert illegal[0] == "0" and illegal[1] == "00000002" and illegal[3] == "0000006b"
    icounts = [int(t[5]) for t in traps]
    assert icounts == sorted(icounts) and all(t[5] == t[6] for t in traps)  # shift 0: 1 ns
    assert f"cpu: illegal instruction 0x0000006b at pc 0x{illegal[2]}" in text
    assert re.search(r"cpu: load from unmapped address 0x28000000 at pc 0x8000[0-9a-f]{4}", text)
    assert re.search(r"cpu: store to unmapped address 0x28000000 at pc 0x8000[0-9a-f]{4}", text)


def test_a_fault_at_pc_0_is_one_line_each(logged: Callable[[str], str]) -> None:
    machine = boot(IMAGES / "hello.elf")
    path = logged("int,guest_errors")
    machine.hart.pc = 0  # as a guest that jumped through a null pointer
    machine.run_slice(3)
    lines = Path(path).read_text().splitlines()
    assert lines[0] == ("riscv_cpu_do_interrupt: hart:0, async:0, cause:00000001, "
                        "epc:0x00000000, tval:0x00000000, desc=fault_fetch, icount:0, time:0ns")
    assert lines[1] == "cpu: instruction fetch from unmapped address 0x00000000 at pc 0x00000000"
    assert len(lines) == 6  # mtvec is 0: each of the 3 steps faults again


def test_bad_hpet_and_pl011_accesses(logged: Callable[[str], str],
                                     build_asm: Callable[[str], Path]) -> None:
    elf = build_asm(f"""
        .globl _start
    _start:
        li t0, {HPET_BASE:#x}
        sw zero, 0(t0)        # capabilities: read-only
        lw t1, 0xf8(t0)       # no register
        sw t1, 0x3e0(t0)      # timer 23 does not exist (3 timers)
        sh zero, 0x10(t0)     # 2-byte access: dropped
        li t0, {UART0_BASE:#x}
        li t1, 3
        sw t1, 0x48(t0)       # DMACR: DMA is not modelled
        sw t1, 0x18(t0)       # FR is read-only
        sw zero, 0x30(t0)     # CR: transmitter off
        sw t1, 0(t0)          # a byte while it is off
    1:  j 1b
    """)
    machine = boot(elf)
    path = logged("guest_errors,unimp")
    machine.run_slice(30)
    assert Path(path).read_text().splitlines() == [
        "hpet: write of 0x0 to the read-only capabilities register (offset 0x000)",
        "hpet: read at offset 0x0f8: no register there",
        "hpet: write at offset 0x3e0: timer 23 does not exist (the HPET has 3)",
        "hpet: 2-byte write of 0x0 at offset 0x010 dropped (the registers take aligned 4- "
        "or 8-byte accesses)",
        "uart0: DMA requested (DMACR 0x3): not modelled",
        "uart0: write of 0x3 to read-only register FR at offset 0x018",
        "uart0: byte 0x03 written to DR while the transmitter is off (CR 0x0000)",
    ]


def test_guest_errors_and_unimp_are_silent_when_off(logged: Callable[[str], str]) -> None:
    hpet = HPET()
    errors: list[str] = []
    hpet.realize(DeviceContext(VirtualClock(), guest_error=errors.append))
    hpet.write(0x000, 1, 4)
    assert errors == ["write of 0x1 to the read-only capabilities register (offset 0x000)"]
    machine = boot(IMAGES / "hello.elf")
    path = logged("int")  # neither guest_errors nor unimp
    machine.bus.write(HPET_BASE, 0, 4)
    machine.bus.write(UART0_BASE + 0x48, 3, 4)
    assert Path(path).read_text() == ""


def _expected_block(machine: Machine, pc: int, count: int) -> list[str]:
    """QEMU's in_asm lines for `count` instructions from pc, by emud's disassembler."""
    lines = []
    for _ in range(count):
        low = machine.bus.peek(pc, 2)
        raw, length = (machine.bus.peek(pc, 4), 4) if low & 3 == 3 else (low, 2)
        code = f"{raw:08x}" if length == 4 else f"{raw:04x}    "
        lines.append(f"0x{pc:08x}:  {code}          {disassemble(raw, pc)}")
        pc += length
    return lines


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_in_asm_logs_each_block_once(logged: Callable[[str], str], accel: str) -> None:
    machine = boot_accel(IMAGES / "hello.elf", accel)
    path = logged("in_asm")
    log.symbolize = load_elf(IMAGES / "hello.elf").symbolize  # as the CLI does
    while machine.exit_code is None:
        machine.run_slice()
    blocks = Path(path).read_text().split("----------------\n")[1:]
    assert blocks[0].strip().splitlines() == ["IN: _start", "Priv: 3; Virt: 0",
                                      *_expected_block(machine, 0x8000_0000, 3)]
    decoded = [b for b in blocks if not b.startswith("IN: region")]
    pcs = [line.split(":")[0] for b in decoded for line in b.splitlines()[2:] if line]
    assert len(pcs) == len(set(pcs))  # the interpreter's blocks: each instruction once
    regions = [b for b in blocks if b.startswith("IN: region 0x")]
    assert bool(regions) == (accel == "translate")
    for block in regions:  # a translated region: its instructions, disassembled
        for line in block.splitlines()[2:]:
            if line:
                pc = int(line[2:10], 16)
                assert [line] == _expected_block(machine, pc, 1)


def test_exec_and_cpu_log_block_starts_without_changing_the_run(
        logged: Callable[[str], str]) -> None:
    plain = boot(IMAGES / "hello.elf")
    while plain.exit_code is None:
        plain.run_slice()
    output = serial_text(plain)
    assert output == "Hello from emud!\n"
    texts = []
    for accel in ("interp", "translate"):  # both run under the interpreter, stepped
        machine = boot_accel(IMAGES / "hello.elf", accel)
        path = logged("exec,cpu")
        log.symbolize = load_elf(IMAGES / "hello.elf").symbolize  # as the CLI does
        while machine.exit_code is None:
            machine.run_slice()
        assert serial_text(machine) == output
        assert machine.clock.icount == plain.clock.icount and machine.hart.x == plain.hart.x
        texts.append(Path(path).read_text())
    assert texts[0] == texts[1]
    lines = texts[0].splitlines()
    traces = [(i, line) for i, line in enumerate(lines) if line.startswith("Trace 0: ")]
    assert traces[0][1] == ("Trace 0: icount=0 time=0ns [00000000/80000000/00000003/00000000] "
                            "_start")
    assert traces[1][1].startswith("Trace 0: icount=3 time=3ns [00000000/8000000c/")
    for i, line in traces:  # each Trace line is followed by the register file at that pc
        pc = line.split("[00000000/")[1][:8]
        assert lines[i + 1] == f" pc       {pc}"
        assert lines[i + 11].startswith(" x0/zero  00000000 x1/ra    ")
        assert re.fullmatch(r"( x\d+/\w+ +[0-9a-f]{8}){4}", lines[i + 18])
    icounts = [int(line.split("icount=")[1].split()[0]) for _, line in traces]
    assert icounts == sorted(icounts) and len(set(icounts)) == len(icounts)


async def test_log_and_logfile_from_the_monitor(tmp_path: Path) -> None:
    """HMP `log` / `logfile` through QMP human-monitor-command on a real daemon."""
    path = tmp_path / "run.log"
    async with qmp_daemon(str(IMAGES / "traps.elf"), "-S", "--qmp", "tcp:127.0.0.1:0") \
            as (process, qmp):
        async def hmp(line: str) -> str:
            reply = await asyncio.wait_for(
                qmp.execute("human-monitor-command", {"command-line": line}), QMP_TIMEOUT)
            assert isinstance(reply, str)
            return reply

        assert "unknown log item 'bogus'" in await hmp("log bogus")
        assert "guest_errors" in await hmp("log help")
        assert await hmp(f"logfile {path}") == ""
        assert await hmp("log int") == ""
        await hmp("run-for 2us")
        assert "desc=machine_ecall" in path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert await hmp("log none") == ""
        size = path.stat().st_size
        await hmp("run-for 20us")
        assert path.stat().st_size == size  # nothing more once off
        assert "could not open log file" in await hmp(f"logfile {tmp_path}/no/such/dir/x")
        # The same commands through the real `emud shell` client.
        other = tmp_path / "shell.log"
        shell = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "emud", "shell", "--qmp", process.banner["QMP"], "-c",
            f"logfile {other}; log guest_errors; write {HPET_BASE:#x} 1 4", cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(shell.communicate(), QMP_TIMEOUT)
        assert shell.returncode == 0, (out, err)
        assert other.read_text() == ("hpet: write of 0x1 to the read-only capabilities register "
                                     "(offset 0x000)\n")
