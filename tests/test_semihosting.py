"""Semihosting: the call sequence, console, exit, time, and host files inside one directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import EventListener, QMPClient

from emud.chardev import RingBackend
from emud.loader import load_elf
from emud.machine import Machine, RunState
from emud.semihosting import TICK_HZ, TIME_EPOCH, SemihostingConfig
from tests.conftest import IMAGES, RECORD_TRAP, ROOT

HELLO = IMAGES / "semihost_hello.elf"
HELLO_TEXT = "hello from semihosting, 2 + 3 = 5\nputs works too\nand stderr\n"

# `sh_call OP, ARG`: a0 = OP, a1 = ARG (an address; `sh_value`: a number), then `sh_trap`:
# the sequence, and a0 is stored in the next word of `results`.  It must stay uncompressed.
PRELUDE = """
.option norelax
.macro sh_trap
    .option push
    .option norvc
    slli x0, x0, 0x1f
    ebreak
    srai x0, x0, 7
    .option pop
    sw a0, 0(s0)
    addi s0, s0, 4
.endm
.macro sh_call op, arg
    li a0, \\op
    la a1, \\arg
    sh_trap
.endm
.macro sh_value op, value
    li a0, \\op
    li a1, \\value
    sh_trap
.endm
.globl _start
_start:
    la s0, results
    la t0, trap
    csrw mtvec, t0
"""
EPILOGUE = """
    sh_call 0x20, exit_block
1:  j 1b
.balign 4
trap:
""" + RECORD_TRAP + """    li t0, 0x100000
    li t1, 0x3333 | (99 << 16)
    sw t1, 0(t0)
2:  j 2b
.data
.balign 4
exit_block: .word 0x20026, 0
results: .space 256
"""

Build = Callable[[str], Path]


def semihosted(elf: Path, config: SemihostingConfig | None = None, **kwargs: Any) -> Machine:
    machine = Machine(RingBackend(), semihosting=config or SemihostingConfig(),
                      semihosting_console=RingBackend(), **kwargs)
    machine.load(load_elf(elf))
    return machine


def results(machine: Machine, n: int) -> list[int]:
    assert machine.image is not None
    base = machine.image.symbols["results"]
    data = machine.bus.read_bytes(base, 4 * n)
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def console(machine: Machine) -> bytes:
    assert machine.semihosting is not None
    backend = machine.semihosting.console
    assert isinstance(backend, RingBackend)
    return backend.read()


def guest(build_asm: Build, body: str, data: str = "") -> Path:
    return build_asm(PRELUDE + body + EPILOGUE + data)


def as_signed(value: int) -> int:
    return value - (1 << 32) if value >> 31 else value


# --- the sequence ------------------------------------------------------------------


def test_disabled_semihosting_ebreak_is_a_breakpoint(build_asm: Build) -> None:
    elf = guest(build_asm, "sh_value 0x03, 0\n")
    machine = Machine(RingBackend())
    machine.load(load_elf(elf))
    assert machine.run_until_poweroff(100_000) == 99
    start = machine.image.entry if machine.image else 0
    cause, mepc, mtval = results(machine, 3)
    assert cause == 3 and mepc == mtval and mepc > start


def test_ebreak_without_the_sequence_stays_a_breakpoint(build_asm: Build) -> None:
    elf = build_asm(PRELUDE + "li a0, 3\nebreak\n" + EPILOGUE)
    machine = semihosted(elf)
    assert machine.run_until_poweroff(100_000) == 99
    assert results(machine, 1) == [3]


@pytest.mark.parametrize("accel", ["interp", "translate"])
def test_console_calls_and_results(build_asm: Build, accel: str) -> None:
    body = """
    sh_call 0x03, char_h
    sh_call 0x04, text
    sh_call 0x01, open_tt_w
    mv t2, a0
    la t0, write_block
    sw t2, 0(t0)
    sh_call 0x05, write_block
    sh_call 0x09, write_block
    sh_call 0x08, negative
    sh_call 0x08, write_block + 8
    sh_value 0x31, 0
    """
    data = """
char_h: .byte 'H'
text: .asciz "ello, "
open_tt_w: .word tt, 4, 3
tt: .asciz ":tt"
.balign 4
write_block: .word 0, payload, 6
negative: .word -5
payload: .ascii "world!"
"""
    elf = guest(build_asm, body, data)
    machine = Machine(RingBackend(), accel=accel, semihosting=SemihostingConfig(),
                      semihosting_console=RingBackend())
    machine.load(load_elf(elf))
    assert machine.run_until_poweroff(1_000_000) == 0
    assert console(machine) == b"Hello, world!"
    char, zero, handle, unwritten, tty, err, ok, freq = results(machine, 8)
    assert (char, zero, unwritten, tty, err, ok) == (0, 0, 0, 1, 1, 0)
    assert handle > 0 and freq == TICK_HZ


def test_exit_codes(build_asm: Build) -> None:
    def exit_with(body: str) -> int | None:
        return semihosted(guest(build_asm, body, "blk: .word 0x20026, 42\n"
                                                 "bad: .word 0x20023, 42\n")
                          ).run_until_poweroff(100_000)

    assert exit_with("sh_call 0x20, blk\n") == 42  # EXIT_EXTENDED: the subcode
    assert exit_with("sh_call 0x20, bad\n") == 1  # another reason: failure, as QEMU
    # SYS_EXIT on RV32 takes the reason itself in a1 and has no subcode (AArch32).
    assert exit_with("sh_value 0x18, 0x20026\n") == 0
    assert exit_with("sh_value 0x18, 0x20023\n") == 1


def test_time_calls_follow_virtual_time(build_asm: Build) -> None:
    body = """
    li t0, 200000
1:  addi t0, t0, -1
    bnez t0, 1b
    sh_value 0x10, 0
    sh_value 0x11, 0
    sh_call 0x30, ticks
    """
    elf = guest(build_asm, body, ".balign 8\nticks: .dword 0\n")
    outcomes = []
    for shift in (9, 9, 10):
        machine = semihosted(elf, icount_shift=shift)
        assert machine.run_until_poweroff(10_000_000) == 0
        clock, seconds, elapsed = results(machine, 3)
        assert machine.image is not None
        ticks = int.from_bytes(machine.bus.read_bytes(machine.image.symbols["ticks"], 8),
                               "little")
        outcomes.append((clock, seconds, elapsed, ticks))
    assert outcomes[0] == outcomes[1]  # same inputs, same bytes
    (clock, seconds, elapsed, ticks), slower = outcomes[0], outcomes[2]
    # ~400k instructions of 512 ns: about 0.2 s (20 centiseconds); twice that at 1024 ns.
    assert seconds == TIME_EPOCH and elapsed == 0
    assert 400_000 * 512 <= ticks < 401_000 * 512 and clock == ticks // 10_000_000 == 20
    assert 2 * ticks - 1000 * 1024 < slower[3] < 2 * ticks + 1000 * 1024
    assert slower[0] == 40


def test_cmdline_and_heapinfo(build_asm: Build) -> None:
    body = """
    sh_call 0x15, cmd_block
    sh_call 0x15, short_block
    sh_value 0x13, 0
    sh_call 0x16, heap_block
    """
    data = """
.balign 4
cmd_block: .word cmd_buf, 256
short_block: .word cmd_buf2, 4
heap_block: .word heap
heap: .space 16
cmd_buf: .space 256
cmd_buf2: .space 4
end_marker:
"""
    elf = guest(build_asm, body, data)
    machine = semihosted(elf, SemihostingConfig(cmdline="prog --fast"), ram_size=1 << 20)
    assert machine.run_until_poweroff(100_000) == 0
    ok, too_small, err = results(machine, 3)[:3]
    assert (ok, as_signed(too_small), err) == (0, -1, errno.E2BIG)
    assert machine.image is not None
    sym = machine.image.symbols
    assert machine.bus.read_bytes(sym["cmd_buf"], 12) == b"prog --fast\0"
    assert int.from_bytes(machine.bus.read_bytes(sym["cmd_block"] + 4, 4), "little") == 11
    heap = machine.bus.read_bytes(sym["heap"], 16)
    base, limit, stack, stack_limit = (int.from_bytes(heap[i:i + 4], "little")
                                       for i in range(0, 16, 4))
    assert base >= sym["end_marker"] and limit == stack == 0x8010_0000 and stack_limit == base
    # The default command line is the image's path.
    default = semihosted(elf)
    assert default.run_until_poweroff(100_000) == 0
    assert default.bus.read_bytes(sym["cmd_buf"], len(str(elf)) + 1) == str(elf).encode() + b"\0"


def test_bad_pointers_are_error_returns(build_asm: Build) -> None:
    body = """
    sh_value 0x04, 0x10000000
    sh_value 0x13, 0
    sh_value 0x05, 0
    sh_call 0x05, wild_write
    sh_value 0x13, 0
    sh_value 0x12, 0
    sh_value 0x77, 0
    sh_value 0x13, 0
    """
    data = ".balign 4\nwild_write: .word 1, 0x7ffffff0, 64\n"
    machine = semihosted(guest(build_asm, body, data))
    assert machine.run_until_poweroff(100_000) == 0
    got = [as_signed(v) for v in results(machine, 8)]
    assert got == [-1, errno.EFAULT, -1, -1, errno.EBADF, -1, -1, errno.ENOSYS]
    assert console(machine) == b""


def test_readc_waits_for_input_without_blocking(build_asm: Build) -> None:
    body = """
    sh_value 0x07, 0
    sh_value 0x07, 0
    sh_call 0x01, open_tt_r
    la t0, read_block
    sw a0, 0(t0)
    sh_call 0x06, read_block
    """
    data = """
.balign 4
open_tt_r: .word tt, 0, 3
tt: .asciz ":tt"
.balign 4
read_block: .word 0, buffer, 8
buffer: .space 8
"""
    machine = semihosted(guest(build_asm, body, data))
    assert machine.run_slice() is RunState.IDLE  # READC: no input, the hart waits
    pc = machine.hart.pc
    assert machine.run_slice() is RunState.IDLE and machine.hart.pc == pc
    assert machine.semihosting is not None
    machine.semihosting.console.feed(b"ab")
    assert machine.run_slice() is RunState.IDLE  # both READCs done, READ waits
    machine.semihosting.console.feed(b"xyz")
    assert machine.run_until_poweroff(100_000) == 0
    char_a, char_b, handle, unread = results(machine, 4)
    assert (chr(char_a), chr(char_b), unread) == ("a", "b", 8 - 3)
    assert machine.image is not None
    assert machine.bus.read_bytes(machine.image.symbols["buffer"], 3) == b"xyz"


def test_gdb_breakpoint_on_the_semihosting_ebreak(build_asm: Build) -> None:
    elf = guest(build_asm, "call_here: sh_call 0x03, char_a\n", "char_a: .byte 'A'\n")
    machine = semihosted(elf)
    assert machine.image is not None
    code = machine.bus.read_bytes(machine.image.symbols["call_here"], 32)
    ebreak = machine.image.symbols["call_here"] + code.index((0x00100073).to_bytes(4, "little"))
    machine.hart.set_breakpoint(ebreak, True)
    assert machine.run_slice() is RunState.DEBUG
    assert machine.hart.pc == ebreak and console(machine) == b""
    machine.hart.set_breakpoint(ebreak, False)
    assert machine.run_until_poweroff(100_000) == 0
    assert console(machine) == b"A"


# --- host files ----------------------------------------------------------------------

FILE_BODY = """
    sh_call 0x01, open_new
    la t0, handles
    sw a0, 0(t0)
    sw a0, write_block, t1
    sh_call 0x05, write_block
    lw t1, handles
    sw t1, close_block, t2
    sh_call 0x02, close_block
    sh_call 0x01, open_old
    sw a0, read_block, t1
    sw a0, flen_block, t1
    sw a0, seek_block, t1
    sh_call 0x0c, flen_block
    sh_call 0x0a, seek_block
    sh_call 0x06, read_block
    sh_call 0x09, flen_block
    sh_call 0x0f, rename_block
    sh_call 0x0e, remove_block
    sh_call 0x01, escape_dotdot
    sh_value 0x13, 0
    sh_call 0x01, escape_abs
    sh_value 0x13, 0
    sh_call 0x01, escape_link
    sh_value 0x13, 0
    sh_call 0x01, escape_dirlink
    sh_value 0x13, 0
    sh_call 0x0e, remove_outside
    sh_call 0x01, missing
    sh_value 0x13, 0
    sh_call 0x01, fifo
    sh_value 0x13, 0
"""
FILE_DATA = """
.balign 4
handles: .word 0
open_new: .word name_new, 4, 7
open_old: .word name_new, 0, 7
write_block: .word 0, payload, 11
close_block: .word 0
read_block: .word 0, buffer, 16
flen_block: .word 0
seek_block: .word 0, 6
rename_block: .word name_new, 7, name_moved, 9
remove_block: .word name_moved, 9
escape_dotdot: .word name_dotdot, 0, 11
escape_abs: .word name_abs, 0, 11
escape_link: .word name_link, 0, 4
escape_dirlink: .word name_dirlink, 0, 9
remove_outside: .word name_dotdot, 11
missing: .word name_missing, 0, 7
fifo: .word name_fifo, 0, 4
name_new: .asciz "sub/new"
name_moved: .asciz "sub/moved"
name_dotdot: .ascii "sub/.."  # climbs two levels: sub, .., .., s
    .ascii "/.."
    .asciz "/s"
name_abs: .asciz "/etc/passwd"
name_link: .asciz "link"
name_dirlink: .asciz "dirlink/s"
name_missing: .asciz "missing"
name_fifo: .asciz "fifo"
payload: .ascii "hello files"
buffer: .space 16
"""


def test_file_calls_stay_inside_the_directory(build_asm: Build, tmp_path: Path) -> None:
    root = tmp_path / "guest"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "s"
    outside.write_text("secret")
    (root / "link").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    os.mkfifo(root / "fifo")
    elf = guest(build_asm, FILE_BODY, FILE_DATA)
    machine = semihosted(elf, SemihostingConfig(files_dir=str(root)))
    assert machine.run_until_poweroff(1_000_000) == 0
    got = [as_signed(v) for v in results(machine, 20)]
    (handle, unwritten, closed, handle2, length, seek, unread, tty, renamed, removed,
     dotdot, dotdot_err, absolute, abs_err, link, link_err, dirlink, dirlink_err,
     remove_out, missing) = got
    assert handle > 0 and handle2 > 0
    assert (unwritten, closed, length, seek, unread, tty) == (0, 0, 11, 0, 16 - 5, 0)
    assert machine.image is not None
    assert machine.bus.read_bytes(machine.image.symbols["buffer"], 5) == b"files"
    assert (renamed, removed) == (0, 0)
    assert not (root / "sub" / "new").exists() and not (root / "sub" / "moved").exists()
    for value, err in ((dotdot, dotdot_err), (absolute, abs_err), (link, link_err),
                       (dirlink, dirlink_err)):
        assert (value, err) == (-1, errno.EACCES)
    assert remove_out == errno.EACCES and outside.read_text() == "secret"
    assert missing == -1
    missing_err, fifo, fifo_err = (as_signed(v) for v in results(machine, 23)[20:])
    assert (missing_err, fifo, fifo_err) == (errno.ENOENT, -1, errno.EACCES)


def test_created_files_are_private_and_handles_survive_nothing_else(build_asm: Build,
                                                                     tmp_path: Path) -> None:
    body = "sh_call 0x01, open_new\n"
    data = ".balign 4\nopen_new: .word name, 4, 3\nname: .asciz \"out\"\n"
    elf = guest(build_asm, body, data)
    machine = semihosted(elf, SemihostingConfig(files_dir=str(tmp_path)))
    old = os.umask(0)
    try:
        assert machine.run_until_poweroff(100_000) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o600
    assert machine.semihosting is not None
    machine.semihosting.close()


def test_without_a_directory_file_calls_are_refused(build_asm: Build, tmp_path: Path) -> None:
    body = "sh_call 0x01, open_new\nsh_value 0x13, 0\nsh_call 0x0e, remove\n"
    data = (".balign 4\nopen_new: .word name, 4, 3\nremove: .word name, 3\n"
            "name: .asciz \"out\"\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        machine = semihosted(guest(build_asm, body, data))
        assert machine.run_until_poweroff(100_000) == 0
    finally:
        os.chdir(cwd)
    assert [as_signed(v) for v in results(machine, 3)] == [-1, errno.EACCES, errno.EACCES]
    assert not (tmp_path / "out").exists()


# --- the picolibc program through the CLI, and against QEMU ----------------------------


def emud_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "emud", "run", *args], env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def test_picolibc_hello_runs_unmodified() -> None:
    done = emud_run("--semihosting", str(HELLO))
    assert (done.returncode, done.stdout) == (7, HELLO_TEXT)


def test_picolibc_hello_matches_qemu() -> None:
    qemu = subprocess.run(
        ["qemu-system-riscv32", "-M", "virt", "-bios", "none", "-kernel", str(HELLO),
         "-semihosting-config", "enable=on,target=native", "-nographic", "-monitor", "none"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    ours = emud_run("--semihosting", str(HELLO))
    # QEMU writes the semihosting console to its stderr, emud to its console backend.
    assert (ours.returncode, ours.stdout) == (qemu.returncode, qemu.stderr + qemu.stdout)


def test_cli_console_to_a_file_and_a_refused_directory(tmp_path: Path) -> None:
    out = tmp_path / "console.txt"
    done = emud_run("--semihosting", "--semihosting-console", f"file:{out}", str(HELLO))
    assert (done.returncode, done.stdout, out.read_text()) == (7, "", HELLO_TEXT)
    done = emud_run("--semihosting-dir", str(tmp_path / "nope"), str(HELLO))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"emud: --semihosting-dir {tmp_path / 'nope'}: not a directory"]


def test_a_snapshot_of_a_waiting_read_resumes_on_input(build_asm: Build) -> None:
    from emud.migration import capture, stage

    elf = guest(build_asm, "sh_value 0x07, 0\n")
    machine = semihosted(elf)
    assert machine.run_slice() is RunState.IDLE  # READC waits
    snap = capture(machine)
    other = semihosted(elf)
    stage(other, snap)()
    assert other.hart.waiting and other.run_slice() is RunState.IDLE
    assert other.semihosting is not None
    other.semihosting.console.feed(b"k")
    assert other.run_until_poweroff(100_000) == 0
    assert results(other, 1) == [ord("k")]


def test_cli_console_reads_stdin_without_blocking_the_daemon(build_asm: Build,
                                                             tmp_path: Path) -> None:
    """READC twice, then exit with the second character.  While the hart waits for
    stdin, the daemon still answers QMP; the input then comes through a pipe."""
    body = "sh_value 0x07, 0\nsh_value 0x07, 0\nsw a0, exit_block + 4, t0\n"
    elf = guest(build_asm, body)
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emud", "run", "--semihosting", "-serial", "null",
         "--qmp", f"unix:{sock}", str(elf)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    stdin = proc.stdin

    async def session() -> list[str]:
        client = QMPClient("semihosting-test")
        await client.connect(str(sock))
        try:
            seen = []
            for _ in range(3):  # the hart waits: the loop answers every time
                status = await client.execute("query-status")
                assert isinstance(status, dict)
                seen.append(status["status"])
            with client.listen(listener := EventListener()):
                stdin.write(b"ab")
                stdin.flush()
                while (await listener.get())["event"] != "SHUTDOWN":
                    pass
            await client.execute("quit")
            return seen
        finally:
            with contextlib.suppress(EOFError):  # qemu.qmp reports the server's goodbye as EOF
                await client.disconnect()

    try:
        assert b"QMP listening" in proc.stderr.readline()
        assert asyncio.run(asyncio.wait_for(session(), 60)) == ["running"] * 3
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ord("b"), err


def test_a_failing_host_call_is_an_error_return(build_asm: Build, tmp_path: Path) -> None:
    """A host failure the handler has no special case for (here fstat and close on a
    descriptor that went away) becomes -1 and errno, never an exception out of the CPU."""
    body = """
    sh_call 0x01, open_file
    sw a0, handle, t0
    sh_value 0x07, 0
    sh_call 0x0c, handle
    sh_value 0x13, 0
    sh_call 0x02, handle
    sh_value 0x13, 0
    """
    data = ".balign 4\nopen_file: .word name, 4, 1\nhandle: .word 0\nname: .asciz \"x\"\n"
    machine = semihosted(guest(build_asm, body, data), SemihostingConfig(files_dir=str(tmp_path)))
    assert machine.run_slice() is RunState.IDLE  # in READC
    assert machine.semihosting is not None
    (fd,) = machine.semihosting.handles.values()
    assert isinstance(fd, int)
    os.close(fd)
    machine.semihosting.console.feed(b"\n")
    assert machine.run_until_poweroff(100_000) == 0
    got = [as_signed(v) for v in results(machine, 6)]
    assert got[2:] == [-1, errno.EBADF, -1, errno.EBADF]


def test_qemu_spelling_of_the_option(build_asm: Build) -> None:
    body = "sh_call 0x15, cmd_block\nsh_call 0x04, buf\n"
    data = ".balign 4\ncmd_block: .word buf, 64\nbuf: .space 64\n"
    elf = guest(build_asm, body, data)
    done = emud_run("-semihosting-config", "enable=on,target=native,arg=prog,arg=-v",
                    str(elf))
    assert (done.returncode, done.stdout) == (0, "prog -v")
    done = emud_run("-semihosting-config", "enable=on,chardev=c0", str(elf))
    assert done.returncode == 2
    assert "unsupported -semihosting-config item 'chardev=c0'" in done.stderr
    done = emud_run("-semihosting-config", "enable=off", "-serial", "null", str(elf))
    assert done.returncode == 99  # off: the first call's ebreak traps (cause 3)


def test_console_input_is_recorded_and_replays_without_repeating_output(
        build_asm: Build) -> None:
    """Under record/replay the semihosting console is an input port like a UART: its
    input is logged and lives in the checkpoints, so going back and forward again
    reproduces the reads, and output the host already had is not written twice."""
    from emud.replay import Replay

    body = """
    sh_value 0x07, 0
    la a1, char
    sb a0, 0(a1)
    li a0, 0x03
    sh_trap
    sh_value 0x07, 0
    """
    machine = semihosted(guest(build_asm, body, "char: .byte 0\n"))
    replay = Replay(machine, interval=5)
    for _ in range(100):
        if replay.run_slice() is RunState.IDLE:  # in the first READC
            break
    assert machine.hart.x[10] == 0x07 and machine.clock.icount < 20
    assert machine.semihosting is not None
    machine.semihosting.console.feed(b"xy")
    while machine.exit_code is None:
        replay.run_slice()
    final = (machine.clock.icount, machine.hart.pc, tuple(machine.hart.x))
    assert results(machine, 3)[::2] == [ord("x"), ord("y")]
    assert console(machine) == b"x"
    assert [e.data for e in replay.events] == [b"xy"]
    for icount in range(final[0] - 1, 0, -1):  # back to the start, one instruction at a time
        assert replay.seek(icount)
    assert machine.semihosting.console.pending_input == 0  # before the input was given
    while machine.clock.icount < final[0]:
        replay.run_slice()
    assert (machine.clock.icount, machine.hart.pc, tuple(machine.hart.x)) == final
    assert results(machine, 3)[::2] == [ord("x"), ord("y")]
    assert console(machine) == b""  # the host already had the "x"
