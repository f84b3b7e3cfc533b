"""The emud target behind a gdb session, in process: breakpoints, watchpoints that stop
before the access (RAM and MMIO), side-effect-free reads, masked stepping, Ctrl-C, exit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_gdbstub_session import packets

from conftest import IMAGES, serial_text
from emud import trace
from emud.chardev import RingBackend
from emud.cpu.debug import AWATCH, RWATCH, WATCH, DebugStop, Watchpoint, WatchpointIndex
from emud.daemon import Daemon
from emud.gdbserver import CSR_REGBASE, EmudTarget
from emud.loader import load_elf
from emud.machine import UART0_BASE, Machine
from emud.memory import FLAG_DEBUG
from gdbstub.codec import encode_le, frame
from gdbstub.session import Session

Rig = tuple[Daemon, EmudTarget, Session]


@pytest.fixture
async def rig_for(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Rig]]:
    tasks: list[tuple[Daemon, asyncio.Task[int]]] = []

    def make(image: Path, accel: str = "interp") -> Rig:
        machine = Machine(RingBackend(), accel=accel)
        machine.load(load_elf(image))
        daemon = Daemon(machine, exit_on_poweroff=False)
        target = EmudTarget(daemon)
        session = Session(target, packet_log=target.server.packet_log)
        target.server.session = session  # no socket: replies stay in the session's outbox
        ask(session, b"qSupported:swbreak+;hwbreak+")
        tasks.append((daemon, asyncio.create_task(daemon.run())))
        return daemon, target, session

    yield make
    for daemon, task in tasks:
        daemon.quit()
        await asyncio.wait_for(task, 10)


def ask(session: Session, payload: bytes) -> list[bytes]:
    """The replies, with the expedited registers of stop replies checked and left out."""
    session.feed(frame(payload))
    return [without_registers(session, reply) for reply in packets(session.drain())]


def without_registers(session: Session, reply: bytes) -> bytes:
    if reply[:1] != b"T":
        return reply
    assert isinstance(session.target, EmudTarget)
    hart = session.target.hart
    for n, value in ((1, hart.x[1]), (2, hart.x[2]), (8, hart.x[8]), (PC, hart.pc)):
        field = b"%02x:%s;" % (n, encode_le(value, 4))
        assert field in reply, (field, reply)
        reply = reply.replace(field, b"", 1)
    return reply


async def stop_reply(session: Session) -> bytes:
    """Wait (bounded) for the one stop reply of a resume in flight."""
    deadline = asyncio.get_running_loop().time() + 20  # a failure guard, not a timing check
    while asyncio.get_running_loop().time() < deadline:
        if out := session.drain():
            (reply,) = packets(out)
            return without_registers(session, reply)
        await asyncio.sleep(0.001)
    raise AssertionError("no stop reply")


def reg(session: Session, n: int) -> int:
    (reply,) = ask(session, b"p%x" % n)
    return int.from_bytes(bytes.fromhex(reply.decode()), "little")


def mem(session: Session, addr: int, length: int) -> bytes:
    (reply,) = ask(session, b"m%x,%x" % (addr, length))
    return bytes.fromhex(reply.decode())


PC = 32

VARIABLE_PROGRAM = """
.globl _start
_start:
    la t0, var
    li t1, 5
    nop
store:
    sw t1, 0(t0)
load:
    lw t2, 0(t0)
    addi t1, t1, 1
    j store
.data
.align 4
var: .word 0
"""


async def test_breakpoint_stops_before_the_instruction(rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    assert daemon.machine.image is not None
    main = daemon.machine.image.symbols["main"]
    assert ask(session, b"?") == [b"T05thread:1;"]  # (expedited registers left out)
    assert ask(session, b"Z0,%x,2" % main) == [b"OK"]
    assert ask(session, b"c") == []
    assert await stop_reply(session) == b"T05swbreak:;thread:1;"
    assert reg(session, PC) == main and daemon.status == "debug"
    assert mem(session, main, 4) == daemon.machine.bus.read_bytes(main, 4)  # memory untouched
    # Resuming with the breakpoint still inserted executes it (no re-stop in place).
    assert ask(session, b"vCont;s:1;c") == [b"T05thread:1;"]
    assert reg(session, PC) != main
    assert ask(session, b"z0,%x,2" % main) == [b"OK"]
    ask(session, b"c")
    assert await stop_reply(session) == b"W00"
    assert serial_text(daemon.machine) == "Hello from emud!\n"


async def test_write_and_read_watchpoints_stop_before_the_access(
        rig_for: Callable[[Path], Rig], build_asm: Callable[[str], Path]) -> None:
    daemon, target, session = rig_for(build_asm(VARIABLE_PROGRAM))
    symbols = daemon.machine.image.symbols  # type: ignore[union-attr]
    var, store, load = symbols["var"], symbols["store"], symbols["load"]
    assert ask(session, b"Z2,%x,4" % var) == [b"OK"]
    ask(session, b"c")
    assert await stop_reply(session) == b"T05watch:%x;thread:1;" % var
    assert reg(session, PC) == store and mem(session, var, 4) == bytes(4)
    ask(session, b"s")  # the store happens now, once
    assert reg(session, PC) == load and mem(session, var, 4) == b"\x05\0\0\0"
    assert ask(session, b"z2,%x,4" % var) == [b"OK"]
    assert not any(f & FLAG_DEBUG for f in daemon.machine.ram.flags)  # stores fast again

    assert ask(session, b"Z3,%x,1" % (var + 2)) == [b"OK"]  # a byte inside the loaded word
    ask(session, b"c")
    assert await stop_reply(session) == b"T05rwatch:%x;thread:1;" % (var + 2)
    assert reg(session, PC) == load and reg(session, 7) == 0  # t2 not loaded yet
    ask(session, b"s")
    assert reg(session, 7) == 5
    ask(session, b"z3,%x,1" % (var + 2))
    assert not daemon.machine.hart.watch_loads  # loads are fast again

    assert ask(session, b"Z4,%x,4" % var) == [b"OK"]
    ask(session, b"c")
    assert await stop_reply(session) == b"T05awatch:%x;thread:1;" % var
    assert reg(session, PC) == store


async def test_hundreds_of_watchpoints(
        rig_for: Callable[[Path], Rig], build_asm: Callable[[str], Path]) -> None:
    daemon, target, session = rig_for(build_asm(VARIABLE_PROGRAM))
    var = daemon.machine.image.symbols["var"]  # type: ignore[union-attr]
    ram = daemon.machine.ram
    elsewhere = [ram.base + ram.size // 2 + 4 * i for i in range(400)]  # never touched
    wide = b"Z4,%x,%x" % (ram.base + ram.size // 4, 0x100000)  # checked on every access
    for packet in [b"Z2,%x,4" % a for a in elsewhere] + [wide]:
        assert ask(session, packet) == [b"OK"]
    assert ask(session, b"Z2,%x,8" % (var - 4)) == [b"OK"]  # overlaps the next one
    assert ask(session, b"Z2,%x,1" % (var + 3)) == [b"OK"]
    assert ask(session, b"Z3,%x,4" % var) == [b"OK"]
    assert len(daemon.machine.hart.watchpoints) == 404
    ask(session, b"c")
    # The store of var hits two write watchpoints: the one inserted first is reported.
    assert await stop_reply(session) == b"T05watch:%x;thread:1;" % var
    assert ask(session, b"z2,%x,8" % (var - 4)) == [b"OK"]
    ask(session, b"s")
    ask(session, b"c")
    assert await stop_reply(session) == b"T05rwatch:%x;thread:1;" % var  # the load after it
    ask(session, b"c")
    assert await stop_reply(session) == b"T05watch:%x;thread:1;" % (var + 3)

    session.close()  # gdb went away: every watchpoint goes, the guest runs on
    assert daemon.running and len(daemon.machine.hart.watchpoints) == 0
    assert not any(f & FLAG_DEBUG for f in ram.flags)
    assert not daemon.machine.hart.watch_loads
    assert not target._watch  # no counts left behind either


def test_watchpoint_index_reports_the_first_added_of_overlapping_ones() -> None:
    index = WatchpointIndex()
    wide = Watchpoint(0x1000, 0x100000, AWATCH)
    narrow = Watchpoint(0x2004, 4, WATCH)
    reader = Watchpoint(0x2000, 8, RWATCH)
    assert index.add(narrow) and index.add(wide) and index.add(reader)
    assert not index.add(Watchpoint(0x2004, 4, WATCH))  # already there
    assert index.readers == 2
    with pytest.raises(DebugStop) as stop:
        index.check(0x2004, 4, True)
    assert (stop.value.kind, stop.value.addr) == (WATCH, 0x2004)
    with pytest.raises(DebugStop) as stop:
        index.check(0x2000, 4, False)
    assert (stop.value.kind, stop.value.addr) == (AWATCH, 0x2000)  # wide came before reader
    with pytest.raises(DebugStop) as stop:
        index.check(0x2000, 4, True)  # only the wide one watches stores there
    assert stop.value.kind == AWATCH
    assert index.remove(wide) and not index.remove(wide)
    index.check(0x2000, 4, True)
    index.check(0x3000, 4, False)
    with pytest.raises(DebugStop):
        index.check(0x2004, 2, False)  # the reader
    assert index.remove(narrow) and index.remove(reader)
    assert len(index) == 0 and index.readers == 0
    index.check(0x2004, 4, True)


async def test_watchpoint_on_a_pl011_register(rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    assert ask(session, b"Z2,%x,4" % UART0_BASE) == [b"OK"]
    ask(session, b"c")
    assert await stop_reply(session) == b"T05watch:%x;thread:1;" % UART0_BASE
    assert serial_text(daemon.machine) == ""  # stopped before the first character went out
    ask(session, b"s")
    assert serial_text(daemon.machine) == "H"
    ask(session, b"c")
    assert await stop_reply(session) == b"T05watch:%x;thread:1;" % UART0_BASE
    assert serial_text(daemon.machine) == ""


async def test_debugger_reads_of_device_registers_have_no_side_effects(
        rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    uart = daemon.machine.device("uart0")
    uart.receive(b"A")
    before = (uart.read_count, uart.flags, uart.int_level)
    assert mem(session, UART0_BASE, 4)[0] == ord("A")
    assert mem(session, UART0_BASE, 0x20)[0x18] == uart.flags & 0xFF  # FR, within a range read
    assert (uart.read_count, uart.flags, uart.int_level) == before
    assert ask(session, b"m%x,4" % (UART0_BASE + 0x1000)) == [b"E14"]  # a hole
    ram_end = 0x80000000 + daemon.machine.ram.size
    assert len(mem(session, ram_end - 2, 8)) == 2  # the readable prefix


STEP_PROGRAM = """
.globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li t0, 8
    csrw mie, t0            # MSIE
    li t1, 0x2000000
    li t2, 1
    sw t2, 0(t1)            # CLINT msip = 1: a software interrupt is pending
enable:
    csrsi mstatus, 8        # MIE: it will be taken before the next instruction
    nop
after:
    j after
.align 2
handler:
    j handler
"""


@pytest.mark.parametrize("accel", ["interp", "translate"])
@pytest.mark.parametrize("step_irqs", [False, True])
async def test_single_step_masks_interrupts_by_default(
        rig_for: Callable[..., Rig], build_asm: Callable[[str], Path], step_irqs: bool,
        accel: str) -> None:
    daemon, target, session = rig_for(build_asm(STEP_PROGRAM), accel)
    symbols = daemon.machine.image.symbols  # type: ignore[union-attr]
    assert ask(session, b"Z0,%x,4" % symbols["enable"]) == [b"OK"]
    ask(session, b"c")
    assert await stop_reply(session) == b"T05swbreak:;thread:1;"
    ask(session, b"z0,%x,4" % symbols["enable"])  # no breakpoint: the accelerator may step
    target.step_irqs = step_irqs
    ask(session, b"s")
    ask(session, b"s")
    expected = symbols["handler"] if step_irqs else symbols["after"]
    assert reg(session, PC) == expected
    assert reg(session, CSR_REGBASE + 0x344) & 8  # mip.MSIP stays pending either way


@pytest.mark.parametrize("loop", ["j _start", "wfi\n j _start"])  # busy, and idle in WFI
async def test_ctrl_c_interrupts_a_running_guest(
        rig_for: Callable[[Path], Rig], build_asm: Callable[[str], Path], loop: str) -> None:
    daemon, target, session = rig_for(build_asm(f".globl _start\n_start: {loop}\n"))
    ask(session, b"c")
    await asyncio.sleep(0.05)
    assert session.drain() == b""
    session.feed(b"\x03")
    assert await stop_reply(session) == b"T02thread:1;"
    assert not daemon.running
    session.feed(b"\x03")  # a late Ctrl-C after the stop: nothing more
    assert session.drain() == b""


async def test_registers_and_csrs(rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    hart = daemon.machine.hart
    (g,) = ask(session, b"g")
    assert len(g) == 33 * 8 and int.from_bytes(bytes.fromhex(g[-8:].decode()), "little") == hart.pc
    assert ask(session, b"P5=78563412") == [b"OK"] and hart.x[5] == 0x12345678
    assert ask(session, b"P0=ffffffff") == [b"OK"] and hart.x[0] == 0
    assert reg(session, CSR_REGBASE + 0x301) == 0x40101105  # misa
    assert ask(session, b"P%x=00010000" % (CSR_REGBASE + 0x305)) == [b"OK"]
    assert hart.mtvec == 0x100
    assert ask(session, b"P%x=00000000" % (CSR_REGBASE + 0xC00)) == [b"E01"]  # read-only cycle
    assert reg(session, CSR_REGBASE + 4096) == 3  # priv: M


async def test_packets_are_traced_with_qemus_event_names(rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    lines: list[str] = []
    previous = trace.set_sink(lines.append)
    try:
        assert trace.set_state("gdbstub_io_*", True) == ["gdbstub_io_command",
                                                        "gdbstub_io_reply"]
        ask(session, b"qAttached")
    finally:
        trace.set_state("gdbstub_io_*", False)
        trace.set_sink(previous)
    assert lines == ["gdbstub_io_command Received: qAttached", "gdbstub_io_reply Sent: 1"]


async def test_kill_resets_and_detach_resumes(rig_for: Callable[[Path], Rig]) -> None:
    daemon, target, session = rig_for(IMAGES / "hello.elf")
    entry = daemon.machine.image.entry  # type: ignore[union-attr]
    ask(session, b"s")
    assert ask(session, b"k") == [] and session.closed
    assert daemon.machine.hart.pc == entry and not daemon.running
    again = Session(target)
    target.server.session = again
    assert not daemon.running
    assert ask(again, b"D") == [b"OK"]
    assert daemon.running
