"""gdbstub.session against a fake target: one reply per packet, one stop reply per resume."""

from __future__ import annotations

import re

import pytest

from gdbstub.codec import escape, frame
from gdbstub.session import Session
from gdbstub.target import (
    BreakpointHit,
    Exited,
    Halted,
    Interrupted,
    Stepped,
    StopReason,
    WatchKind,
    WatchpointHit,
)

MEM_BASE = 0x1000


class FakeTarget:
    register_size = 4
    gdb_register_count = 3
    pc_regnum = 2
    step_irqs = False
    expedited_registers: tuple[int, ...] = ()

    def __init__(self, *, with_points: bool = True) -> None:
        self.regs = [0, 0x11223344, 0x80000000]
        self.mem = bytearray(range(256))
        self.calls: list[tuple[object, ...]] = []
        self.step_result: StopReason = Stepped()
        self.with_points = with_points

    def target_xml(self) -> str:
        return "<target>" + "x" * 5000 + "</target>"

    def read_register(self, regnum: int) -> int | None:
        return self.regs[regnum] if regnum < len(self.regs) else None

    def write_register(self, regnum: int, value: int) -> bool:
        if regnum >= len(self.regs):
            return False
        self.regs[regnum] = value
        return True

    def read_memory(self, addr: int, length: int) -> bytes:
        off = addr - MEM_BASE
        if not 0 <= off < len(self.mem):
            return b""
        return bytes(self.mem[off : off + length])

    def write_memory(self, addr: int, data: bytes) -> bool:
        off = addr - MEM_BASE
        if not 0 <= off <= len(self.mem) - len(data):
            return False
        self.mem[off : off + len(data)] = data
        return True

    def attach(self) -> StopReason:
        self.calls.append(("attach",))
        return Halted()

    def resume(self, step: bool) -> StopReason | None:
        self.calls.append(("resume", step))
        return self.step_result if step else None

    def interrupt(self) -> None:
        self.calls.append(("interrupt",))

    def detach(self) -> None:
        self.calls.append(("detach",))

    def kill(self) -> None:
        self.calls.append(("kill",))

    def breakpoints(self) -> FakeTarget | None:
        return self if self.with_points else None

    def watchpoints(self) -> FakeTarget | None:
        return self if self.with_points else None

    def monitor(self) -> FakeTarget:
        return self

    def memory_map(self) -> str | None:
        return None

    def add_breakpoint(self, addr: int, hardware: bool) -> bool:
        self.calls.append(("break+", addr, hardware))
        return True

    def remove_breakpoint(self, addr: int, hardware: bool) -> bool:
        self.calls.append(("break-", addr, hardware))
        return True

    def add_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool:
        self.calls.append(("watch+", kind, addr, length))
        return True

    def remove_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool:
        self.calls.append(("watch-", kind, addr, length))
        return True

    def monitor_command(self, command: str) -> str:
        return f"ran {command}\n"


def packets(wire: bytes) -> list[bytes]:
    """The payloads of all packets in `wire`, checking every checksum."""
    out = []
    for payload, csum in re.findall(rb"\$([^#]*)#(..)", wire):
        assert frame(payload)[-2:] == csum
        out.append(payload)
    return out


def ask(session: Session, payload: bytes) -> list[bytes]:
    session.feed(frame(payload))
    return packets(session.drain())


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def session(target: FakeTarget) -> Session:
    s = Session(target)
    s.feed(b"+" + frame(b"QStartNoAckMode"))
    assert s.drain() == b"+" + frame(b"OK")
    s.feed(b"+")  # gdb acknowledges the OK, then both sides stop acking
    return s


def test_attach_stops_and_reports_sigtrap(session: Session, target: FakeTarget) -> None:
    assert target.calls == [("attach",)]
    assert ask(session, b"?") == [b"T05thread:1;"]


def test_ack_mode_acks_and_nacks_and_resends() -> None:
    s = Session(FakeTarget())
    s.feed(frame(b"g"))
    out = s.drain()
    assert out.startswith(b"+$") and packets(out) == [b"00000000443322110000" + b"0080"]
    s.feed(b"$g#00")  # bad checksum
    assert s.drain() == b"-"
    s.feed(b"-")  # gdb did not get our last packet: resend it
    assert packets(s.drain()) == [b"00000000443322110000" + b"0080"]


def test_no_ack_mode_is_silent_about_checksums(session: Session) -> None:
    session.feed(b"$g#00")
    assert session.drain() == b""


def test_qsupported_is_computed_from_the_target() -> None:
    full = Session(FakeTarget())
    full.feed(frame(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386"))
    (reply,) = packets(full.drain())
    assert reply.split(b";") == [b"PacketSize=10000", b"QStartNoAckMode+",
                                 b"qXfer:features:read+", b"vContSupported+",
                                 b"swbreak+", b"hwbreak+"]
    bare = Session(FakeTarget(with_points=False))
    bare.feed(frame(b"qSupported"))
    assert b"swbreak+" not in packets(bare.drain())[0]
    bare.feed(frame(b"Z0,1000,4"))
    assert packets(bare.drain()) == [b""]  # unsupported: empty reply


def test_unknown_packets_get_the_empty_reply(session: Session) -> None:
    for payload in (b"vMustReplyEmpty", b"qTStatus", b"!", b"qCRC:0,4", b"bc", b"\xff"):
        assert ask(session, payload) == [b""]


def test_registers(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"p1") == [b"44332211"]
    assert ask(session, b"p7") == [b"xxxxxxxx"]  # unavailable, not an error
    assert ask(session, b"P1=78563412") == [b"OK"]
    assert target.regs[1] == 0x12345678
    assert ask(session, b"P7=00000000") == [b"E01"]
    assert ask(session, b"G" + b"01000000" * 3) == [b"OK"]
    assert target.regs == [1, 1, 1]
    assert ask(session, b"P1=123") == [b"E22"]


def test_memory_read_write_and_errors(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"m1000,4") == [b"00010203"]
    assert ask(session, b"m10fe,4") == [b"feff"]  # short read: the readable prefix
    assert ask(session, b"m0,4") == [b"E14"]
    assert ask(session, b"M1000,2:abcd") == [b"OK"]
    assert target.mem[:2] == b"\xab\xcd"
    binary = bytes([0x23, 0x24, 0x7D, 0x2A, 0x3A, 0x2C])  # # $ } * : ,
    assert ask(session, b"X1010,6:" + escape(binary)) == [b"OK"]
    assert target.mem[0x10:0x16] == binary
    assert ask(session, b"X1000,0:") == [b"OK"]  # gdb's probe for X
    assert ask(session, b"M1000,3:abcd") == [b"E22"]
    assert ask(session, b"mzz,4") == [b"E22"]
    assert ask(session, b"M0,1:00") == [b"E14"]


def test_long_reads_are_clamped_to_the_packet_size(session: Session, target: FakeTarget) -> None:
    target.mem = bytearray(0x20000)
    (reply,) = ask(session, b"m1000,20000")
    assert len(reply) == session.packet_size


def test_target_xml_is_served_in_chunks(session: Session, target: FakeTarget) -> None:
    doc = target.target_xml().encode()
    got, offset = b"", 0
    while True:
        (reply,) = ask(session, b"qXfer:features:read:target.xml:%x,800" % offset)
        got += reply[1:]
        offset += len(reply) - 1
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m"
    assert got == doc
    assert ask(session, b"qXfer:features:read:other.xml:0,100") == [b"E00"]
    assert ask(session, b"qXfer:memory-map:read::0,100") == [b"E00"]  # the target has none


def test_continue_gets_exactly_one_stop_reply(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"vCont;c") == []
    assert target.calls[-1] == ("resume", False)
    session.stopped(BreakpointHit())
    session.stopped(Interrupted())  # a second stop of the same resume: no second reply
    assert packets(session.drain()) == [b"T05thread:1;"]  # gdb did not offer swbreak+


def test_breakpoint_reply_carries_swbreak_when_negotiated(target: FakeTarget) -> None:
    s = Session(target)
    s.feed(frame(b"qSupported:swbreak+;hwbreak+"))
    s.drain()
    s.feed(frame(b"c"))
    s.stopped(BreakpointHit(hardware=True))
    assert packets(s.drain()) == [b"T05hwbreak:;thread:1;"]


@pytest.mark.parametrize("reason,reply", [
    (Exited(3), b"W03"),
    (Interrupted(), b"T02thread:1;"),
    (WatchpointHit(WatchKind.WRITE, 0x10000000), b"T05watch:10000000;thread:1;"),
    (WatchpointHit(WatchKind.READ, 0x80), b"T05rwatch:80;thread:1;"),
    (WatchpointHit(WatchKind.ACCESS, 0x80), b"T05awatch:80;thread:1;"),
])
def test_stop_replies(session: Session, reason: StopReason, reply: bytes) -> None:
    ask(session, b"c")
    session.stopped(reason)
    assert packets(session.drain()) == [reply]
    assert ask(session, b"?") == [reply]


def test_stop_without_a_resume_is_not_reported(session: Session) -> None:
    session.stopped(Interrupted())
    assert session.drain() == b""


def test_step_replies_at_once(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"vCont;s:1;c") == [b"T05thread:1;"]  # gdb's stepi with osabi none
    assert target.calls[-1] == ("resume", True)
    assert ask(session, b"vCont;s:p1.1;c:p1.-1") == [b"T05thread:1;"]
    assert ask(session, b"s80000010") == [b"T05thread:1;"]
    assert target.regs[2] == 0x80000010
    assert ask(session, b"vCont?") == [b"vCont;c;C;s;S"]
    assert ask(session, b"vCont;s:2") == [b"E22"]  # not our thread
    assert ask(session, b"vCont;q") == [b"E22"]


def test_ctrl_c_while_running_interrupts_the_target(session: Session,
                                                   target: FakeTarget) -> None:
    ask(session, b"c")
    session.feed(b"\x03")
    assert target.calls[-1] == ("interrupt",)
    session.stopped(Interrupted())
    assert packets(session.drain()) == [b"T02thread:1;"]


def test_ctrl_c_between_steps_stops_the_next_resume(session: Session,
                                                    target: FakeTarget) -> None:
    # gdb's `stepi N`: the 0x03 arrives after a step's reply, before the next step.
    assert ask(session, b"vCont;s:1;c") == [b"T05thread:1;"]
    session.feed(b"\x03")
    assert session.drain() == b""  # no reply of its own: gdb is not waiting for one now
    assert ("interrupt",) not in target.calls
    assert ask(session, b"m1000,4") == [b"00010203"]  # gdb reads memory between steps
    steps = target.calls.count(("resume", True))
    assert ask(session, b"vCont;s:1;c") == [b"T02thread:1;"]
    assert target.calls.count(("resume", True)) == steps  # answered without stepping
    assert ask(session, b"vCont;s:1;c") == [b"T05thread:1;"]  # consumed: one stop only
    session.feed(b"\x03" + b"\x03")  # pressed twice: still one SIGINT
    assert ask(session, b"c") == [b"T02thread:1;"]
    assert ask(session, b"?") == [b"T02thread:1;"]
    assert ask(session, b"s") == [b"T05thread:1;"]


def test_z_packets_are_idempotent_and_removed_on_detach(session: Session,
                                                        target: FakeTarget) -> None:
    assert ask(session, b"Z0,80000000,4") == [b"OK"]
    assert ask(session, b"Z0,80000000,4") == [b"OK"]  # a retransmit: not inserted twice
    assert ask(session, b"Z1,80000004,2") == [b"OK"]
    assert ask(session, b"Z2,1000,4") == [b"OK"]
    assert ask(session, b"Z4,2000,1") == [b"OK"]
    assert ask(session, b"z4,2000,1") == [b"OK"]
    assert ask(session, b"z4,2000,1") == [b"OK"]
    assert ask(session, b"Z9,0,0") == [b""]
    assert ask(session, b"Z0,zz,4") == [b"E22"]
    inserted = [c for c in target.calls if c[0] in ("break+", "watch+")]
    assert inserted == [("break+", 0x80000000, False), ("break+", 0x80000004, True),
                        ("watch+", WatchKind.WRITE, 0x1000, 4),
                        ("watch+", WatchKind.ACCESS, 0x2000, 1)]
    target.calls.clear()
    assert ask(session, b"D") == [b"OK"]
    assert session.closed
    assert sorted(target.calls, key=str) == sorted(
        [("break-", 0x80000000, False), ("break-", 0x80000004, True),
         ("watch-", WatchKind.WRITE, 0x1000, 4), ("detach",)], key=str)


def test_disconnect_without_detach_behaves_like_detach(session: Session,
                                                       target: FakeTarget) -> None:
    ask(session, b"Z0,80000000,2")
    session.close()
    session.close()
    assert target.calls[-2:] == [("break-", 0x80000000, False), ("detach",)]


def test_kill_ends_the_session_without_a_reply(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"k") == []
    assert session.closed and target.calls[-1] == ("kill",)
    session.close()
    assert ("detach",) not in target.calls


def test_monitor_output_as_console_packets(session: Session) -> None:
    replies = ask(session, b"qRcmd," + b"info mtree".hex().encode())
    assert replies == [b"O" + b"ran info mtree\n".hex().encode(), b"OK"]
    assert ask(session, b"qRcmd,zz") == [b"E22"]


def test_threads(session: Session) -> None:
    assert ask(session, b"qfThreadInfo") == [b"m1"]
    assert ask(session, b"qsThreadInfo") == [b"l"]
    assert ask(session, b"qC") == [b"QC1"]
    assert ask(session, b"Hg0") == [b"OK"]
    assert ask(session, b"qAttached") == [b"1"]


def test_qemu_single_step_flags(session: Session, target: FakeTarget) -> None:
    assert ask(session, b"qqemu.sstepbits") == [b"ENABLE=1,NOIRQ=2,NOTIMER=4"]
    assert ask(session, b"qqemu.sstep") == [b"0x7"]  # interrupts masked while stepping
    assert ask(session, b"Qqemu.sstep=1") == [b"OK"]
    assert target.step_irqs and ask(session, b"qqemu.sstep") == [b"0x5"]
    assert ask(session, b"Qqemu.sstep=7") == [b"OK"] and not target.step_irqs
    assert ask(session, b"Qqemu.sstep=x") == [b"E22"]


def test_stop_replies_carry_the_expedited_registers(target: FakeTarget) -> None:
    target.expedited_registers = (2, 1)
    session = Session(target)
    assert packets(session.drain()) == []
    assert ask(session, b"?") == [b"T0502:00000080;01:44332211;thread:1;"]


def test_exit_during_step_is_w(session: Session, target: FakeTarget) -> None:
    target.step_result = Exited(0x101)
    assert ask(session, b"s") == [b"W01"]
