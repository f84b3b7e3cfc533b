"""HMP text: QEMU is the oracle for x/xp/print formats, expressions, help and errors.

The same image is loaded into qemu-system-riscv32 (-S, so RAM holds the image
untouched) and into emud; the same command sequence (sticky /fmt included)
goes through `human-monitor-command` to both, and the replies must be equal
byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator

import pytest
from qemu.qmp import QMPClient

from conftest import IMAGES, START_TIMEOUT, boot, wait_for_socket
from emud.daemon import Daemon
from emud.monitor import Monitor, MonitorError
from emud.monitor.hmpparse import Cursor, Format, ParseError, parse_duration, parse_format

IMAGE = IMAGES / "hello.elf"

# Order matters: the format given last is the default for the next command (QEMU's rule).
SAME_AS_QEMU = [
    "xp /16xb 0x80000000", "xp /8xh 0x80000000", "xp /6wx 0x80000000", "xp /3gx 0x80000000",
    "xp /5wd 0x80000000", "xp /5wu 0x80000000", "xp /4wo 0x80000000", "xp /3bd 0x80000000",
    "xp /10xb 0x80000000", "xp /12c 0x80000100", "xp 0x80000004", "xp /2 0x80000000",
    "xp /h 0x80000000", "xp /3c 0x80000000", "x /4wx 0x80000000", "x /2gd 0x80000000",
    "x /3gu 0x80000000", "x /3hd 0x80000010", "xp/4xw 0x05000000", "x/4xw 0x05000000",
    "p 0", "p/x 0", "p/x 255", "p/d -1", "p/u -1", "p/o 8", "p/o 0", "p/c 65", "p/c 10",
    "p 1+2*3", "p (1+2)*3", "p 7/2", "p -7/2", "p -7%3", "p 0x10 | 0x01 ^ 3", "p ~0", "p 'A'",
    "p/x 012", "p 1 - - 1", "p -(3)", "p/x 0x80000000 + 0x7fffffff * 2", "p/i 5", "p 5",
    # errors, as HMP prints them
    "xp /q 0", "p 1 +", "p (1", "p 1/0", "p $nope", "print $nope", "p/x 1 2", "xp/x",
    "p 08", "p 0x", "p 'ab'", "frobnicate", "info foo", "help frob", "loadvm",
    "ringbuf_read foo 5", "trace-event foo on", "trace-event foo maybe", "info registers -z",
    "x/3x 0x80000000 junk", "p 1 ", "p 18446744073709551616", "p 0x10000000000000000",
    "p 0x000000000000000000000001", "p 18446744073709551615",
    # help lines and status
    "help quit", "help stop", "help cont", "help x", "help xp", "help p", "help print",
    "help system_reset", "help system_powerdown", "help ringbuf_read", "help savevm",
    "help loadvm", "help delvm", "help help", "help info status", "info status",
    "info trace-events nosuch*",
]

HELP_WITH_DETAILS = {"help x", "help xp", "help p", "help print"}


@pytest.fixture
async def qemu() -> AsyncIterator[QMPClient]:
    sock = os.path.join(tempfile.mkdtemp(prefix="emud-oracle-"), "qmp.sock")
    proc = subprocess.Popen(
        ["qemu-system-riscv32", "-machine", "virt", "-bios", "none", "-kernel", str(IMAGE),
         "-S", "-display", "none", "-nodefaults", "-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        qmp = QMPClient("qemu")
        await wait_for_socket(proc, sock)
        await asyncio.wait_for(qmp.connect(sock), START_TIMEOUT)
        yield qmp
        await qmp.disconnect()
    finally:
        proc.kill()
        proc.wait()


async def test_hmp_output_matches_qemu(qemu: QMPClient) -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    for line in SAME_AS_QEMU:
        expected = await qemu.execute("human-monitor-command", {"command-line": line})
        ours = await monitor.human_monitor_command(line)
        if line in HELP_WITH_DETAILS:  # QEMU's line first, then emud's details (formats)
            first, _, details = ours.partition("\n")
            assert details.startswith("  format: ") or "  format: " in details, line
            ours = first + "\n"
        assert ours.replace("\n", "\r\n") == expected, line


# --- pure parts ----------------------------------------------------------------------


def test_format_parts_are_sticky() -> None:
    first = parse_format(Cursor("/10xb"), Format())
    assert first == Format(10, "x", 1)
    assert parse_format(Cursor("/2d"), first) == Format(2, "d", 1)
    assert parse_format(Cursor("/i"), first) == Format(1, "i", 1)
    assert parse_format(Cursor(""), Format(5, "o", 8)) == Format(1, "o", 8)
    with pytest.raises(ParseError, match="invalid char in format: 'z'"):
        parse_format(Cursor("/4z"), Format())


@pytest.mark.parametrize(("text", "ns"), [
    ("10ms", 10_000_000), ("5us", 5_000), ("1000ns", 1_000), ("2s", 2_000_000_000),
    ("0.5s", 500_000_000), ("250", 250)])
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "ms", "-5ms", "0", "ten", "5 parsecs"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(MonitorError):
        parse_duration(text)


def test_print_knows_registers_and_symbols() -> None:
    machine = boot(IMAGE)
    monitor = Monitor(Daemon(machine, start_paused=True))
    assert machine.image is not None
    main = machine.image.symbols["main"]
    assert monitor.execute_hmp_now("p/x main + 2") == f"{main + 2:#x}\n"
    machine.hart.x[10] = 0x1234
    assert monitor.execute_hmp_now("p/x $a0 + $x10 + $zero") == "0x2468\n"
    assert monitor.execute_hmp_now("p/x $pc") == f"{machine.hart.pc:#x}\n"
    assert monitor.execute_hmp_now("p/x $mstatus") == f"{machine.hart.mstatus:#x}\n"
    with pytest.raises(ParseError, match="unknown symbol 'no_such_symbol'"):
        monitor.execute_hmp_now("p no_such_symbol")


@pytest.mark.parametrize(("line", "error"), [
    ("p " + "(" * 244 + "1" + ")" * 244, "expression nested too deeply (at most 100 levels)"),
    ("p " + "-" * 1000 + "1", "expression nested too deeply (at most 100 levels)"),
    ("p " + "9" * 4301, "number too large"),
    ("p 0" + "7" * 5000, "number too large"),
    ("p 0x" + "f" * 17, "number too large"),
    ("p \u0663", "invalid char '\u0663' in expression"),  # a digit, but not an ASCII one
    ("x/\u0663x 0", "invalid char in format: '\u0663'"),
    ("p $x\u00b2", "unknown register"),
    ("p $x" + "1" * 5000, "unknown register"),
])
def test_hostile_expressions_are_clear_errors(line: str, error: str) -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    with pytest.raises(ParseError) as caught:
        monitor.execute_hmp_now(line)
    assert caught.value.desc.splitlines()[0] == error


def test_nesting_up_to_the_limit_still_evaluates() -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    assert monitor.execute_hmp_now("p/d " + "(" * 100 + "7" + ")" * 100) == "7\n"
    assert monitor.execute_hmp_now("p/d " + "-" * 100 + "7") == "7\n"
    assert monitor.execute_hmp_now("p/x 0" + "0" * 5000 + "17") == "0xf\n"


def test_huge_dumps_are_capped_with_a_note() -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    for line, next_addr in [("x/1000000000wx 0x80000000", 0x80040000),
                            ("xp/100000000xb 0x80000000", 0x80020000),
                            ("x/99999999999999999999999999999999999999i 0x80000000", None)]:
        lines = monitor.execute_hmp_now(line).splitlines()
        assert len(lines) == 16385
        note = lines[-1]
        assert note.startswith("(output capped at 16384 lines; the next address is 0x")
        if next_addr is not None:
            assert note.endswith(f"0x{next_addr:x})")
    # Below the cap nothing changes.
    assert len(monitor.execute_hmp_now("x/65536wx 0x80000000").splitlines()) == 16384


async def test_capped_dump_says_so_in_its_structured_result() -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    result = await monitor.execute_hmp_structured("x/100000wx 0x80000000")
    assert result["truncated"] and result["next"] == 0x80040000
    assert len(result["values"]) == 16384 * 4


def test_overlong_lines_are_refused_before_parsing() -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    line = "p " + "1+" * 4_700_000 + "1"  # 9 MiB of expression
    with pytest.raises(MonitorError, match=r"^command line too long \(9400003 characters; "
                                           r"HMP takes at most 65536\)$"):
        monitor.execute_hmp_now(line)
    assert monitor.execute_hmp_now("p/d " + "1+" * 30_000 + "1") == "30001\n"


def test_help_for_one_command_lists_its_formats() -> None:
    monitor = Monitor(Daemon(boot(IMAGE), start_paused=True))
    lines = monitor.execute_hmp_now("help x").splitlines()
    assert lines[0] == "x /fmt addr -- virtual memory dump starting at 'addr'"
    assert "  format: x hex, d signed decimal, u unsigned decimal, o octal, c char, " \
           "i instruction" in lines
    assert "  size: b 8-bit, h 16-bit, w 32-bit, g 64-bit (not used by i)" in lines
    assert monitor.execute_hmp_now("help xp").splitlines()[1:] == lines[1:]
    # The whole list stays one line per command.
    listing = monitor.execute_hmp_now("help").splitlines()
    assert not any(line.startswith("  format") for line in listing)
    assert "QEMU release" in monitor.execute_hmp_now("help info version")
    assert "version of QEMU" not in monitor.execute_hmp_now("help info version")
