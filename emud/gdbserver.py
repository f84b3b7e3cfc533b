"""The daemon's side of the gdb stub: emud-virt as a `gdbstub.Target`.

Run control goes through the Daemon, so gdb, QMP and the monitor see the same
run state; the stop of a running guest reaches gdb through the daemon's events.

Policy (README, "Debugging with gdb"): attaching stops the machine; detaching
or dropping the connection removes gdb's breakpoints and watchpoints and lets
the guest run; `kill` resets the guest and leaves it paused.  The daemon
outlives every gdb session.  Single steps mask interrupts (`step_irqs`).
"""

from __future__ import annotations

import socket
from collections import Counter
from typing import Any

from emud import trace
from emud.cpu.csr import Csr
from emud.cpu.debug import BREAK, Watchpoint
from emud.cpu.disasm import ABI_NAMES
from emud.cpu.interp import Trap
from emud.daemon import Daemon
from emud.machine import RunState
from emud.memory import BusError
from emud.monitor import Monitor, MonitorError, hmp_error_text
from emud.replay.engine import Hit, Travel
from emud.replay.events import CSR_REG, PRIV_REG, write_register
from gdbstub.server import GdbServer
from gdbstub.target import (
    BreakpointHit,
    Exited,
    Halted,
    HistoryEnd,
    Interrupted,
    Stepped,
    StopReason,
    WatchKind,
    WatchpointHit,
)

M = 0xFFFF_FFFF
PC_REGNUM = 32
CSR_REGBASE = 65  # gdb's own numbering of RISC-V CSRs without a description: 65 + number
PRIV_REGNUM = CSR_REGBASE + 4096
CSRS = frozenset(int(csr) for csr in Csr)

# Registers that hold addresses get pointer types.  gdb sign-extends a 32-bit `int`
# register into its 64-bit address type, so with `int` the value of `x/i $mepc` lands
# near 0xffffffff80000000, outside the memory map, and gdb refuses it without asking.
# Pointer types are unsigned and print as addresses (`<main+4>`).  The GPRs follow gdb's
# own riscv description (ra, sp, gp, tp, fp); of the CSRs, mepc and mtvec hold code
# addresses, mscratch by convention points at the trap handler's save area, and mtval
# holds the faulting address of access faults (the instruction bits of an illegal one
# print as a pointer too, which is harmless).  All others stay `int`.
GPR_TYPES = {1: "code_ptr", 2: "data_ptr", 3: "data_ptr", 4: "data_ptr", 8: "data_ptr"}
CSR_TYPES = {Csr.MEPC: "code_ptr", Csr.MTVEC: "code_ptr",
             Csr.MSCRATCH: "data_ptr", Csr.MTVAL: "data_ptr"}

# QEMU's event names; `monitor trace-event gdbstub_io_command on` enables one.
trace_command = trace.event("gdbstub_io_command", "Received: %s")
trace_reply = trace.event("gdbstub_io_reply", "Sent: %s")


def _trace_packet(received: bool, payload: bytes) -> None:
    event = trace_command if received else trace_reply
    if event.enabled:  # decoding a 64 KiB reply is not free
        event(payload.decode("ascii", "backslashreplace"))


def target_xml() -> str:
    """riscv:rv32 with `osabi none`, so gdb single-steps with `s` (not temporary breakpoints)."""
    cpu = "".join(
        f'<reg name="{name}" bitsize="32" regnum="{n}" type="{_gpr_type(n)}"/>'
        for n, name in enumerate(ABI_NAMES))
    cpu += f'<reg name="pc" bitsize="32" regnum="{PC_REGNUM}" type="code_ptr"/>'
    csrs = "".join(
        f'<reg name="{csr.name.lower()}" bitsize="32" regnum="{CSR_REGBASE + csr}" '
        f'type="{CSR_TYPES.get(csr, "int")}" group="csr"/>'
        for csr in sorted(Csr))
    return ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
            "<target><architecture>riscv:rv32</architecture><osabi>none</osabi>"
            f'<feature name="org.gnu.gdb.riscv.cpu">{cpu}</feature>'
            f'<feature name="org.gnu.gdb.riscv.csr">{csrs}</feature>'
            '<feature name="org.gnu.gdb.riscv.virtual">'
            f'<reg name="priv" bitsize="32" regnum="{PRIV_REGNUM}" group="general"/>'
            "</feature></target>")


def _gdb_views(base: int) -> tuple[int, ...]:
    """Where gdb sees a region starting at `base`: also sign-extended when bit 31 is set.
    gdb widens an `int` value (`x/x $a0`, a cast of a negative number) to its 64-bit
    address by sign extension and checks it against the memory map before it sends the
    packet, whose address it then cuts back to 32 bits; the second view lets those
    addresses through to the same bytes."""
    return (base, base | ~M & (1 << 64) - 1) if base & 0x8000_0000 else (base,)


def _gpr_type(n: int) -> str:
    return GPR_TYPES.get(n, "int")


class EmudTarget:
    register_size = 4
    gdb_register_count = 33  # x0..x31, pc
    pc_regnum = PC_REGNUM
    # ra, sp, fp, pc: what gdb needs for the frame, so it skips reading all registers
    expedited_registers: tuple[int, ...] = (1, 2, 8, PC_REGNUM)

    def __init__(self, daemon: Daemon, *, shared_door: bool = False) -> None:
        self.daemon = daemon
        self.machine = daemon.machine
        self.hart = daemon.machine.hart
        self.server = GdbServer(self, packet_log=_trace_packet)
        self.step_irqs = False  # take interrupts during a single step (QEMU: sstep bits)
        self._sw: Counter[int] = Counter()
        self._hw: Counter[int] = Counter()
        self._watch: Counter[tuple[WatchKind, int, int]] = Counter()
        self._monitor = Monitor(daemon, shared_door=shared_door)  # monitor commands via TCP
        self._xml = target_xml()
        daemon.listeners.append(self._on_event)

    # --- events from the daemon -------------------------------------------------------

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "STOP":
            self.server.report_stop(self._debug_reason() or Interrupted())
        elif event == "SHUTDOWN" and data.get("guest"):
            self.server.report_stop(Exited(self.machine.exit_code or 0))

    def _debug_reason(self) -> StopReason | None:
        stop = self.hart.debug_stop
        if stop is None:
            return None
        if stop.kind == BREAK:
            return BreakpointHit(hardware=stop.addr in self._hw and stop.addr not in self._sw)
        return WatchpointHit(WatchKind(stop.kind), stop.addr)

    # --- run control ----------------------------------------------------------------

    def attach(self) -> StopReason:
        """Stops the machine.  A powered-off guest can still be inspected (and reset with
        `monitor system_reset`); resuming it reports the exit again."""
        self.daemon.stop()
        return Halted()

    def resume(self, step: bool) -> StopReason | None:
        if self.machine.exit_code is not None:
            return Exited(self.machine.exit_code)
        if not step:
            self.daemon.cont()
            return None
        self.hart.irqs_masked = not self.step_irqs
        try:
            state = self.daemon.step()
        finally:
            self.hart.irqs_masked = False
        if state is RunState.POWEROFF:
            return Exited(self.machine.exit_code or 0)
        return self._debug_reason() or Stepped()

    def interrupt(self) -> None:
        if self.daemon.job is not None:
            self.daemon.cancel_job()  # a reverse-continue: it reports Interrupted
        elif self.daemon.running:
            self.daemon.stop()  # the STOP event reports Interrupted
        else:
            self.server.report_stop(Interrupted())

    def detach(self) -> None:
        self.daemon.cont()

    def kill(self) -> None:
        self.daemon.system_reset()

    # --- registers --------------------------------------------------------------------

    def read_register(self, regnum: int) -> int | None:
        hart = self.hart
        if regnum < 32:
            return hart.x[regnum]
        if regnum == PC_REGNUM:
            return hart.pc
        if regnum == PRIV_REGNUM:
            return hart.priv
        csr = regnum - CSR_REGBASE
        if csr in CSRS:
            try:
                return hart.csr_read(csr, 0)
            except Trap:
                return None
        return None

    def write_register(self, regnum: int, value: int) -> bool:
        """gdb's numbering to the control-plane one (emud/replay/events.py), which
        also logs the write as an input of the recorded run."""
        if 0 <= regnum <= PC_REGNUM:
            reg = regnum  # x0 is zero: its writes are taken and ignored, as on hardware
        elif regnum == PRIV_REGNUM:
            reg = PRIV_REG
        elif regnum - CSR_REGBASE in CSRS:
            reg = CSR_REG + regnum - CSR_REGBASE
        else:
            return False
        if not write_register(self.machine, reg, value):
            return False
        if reg and self.daemon.replay is not None:
            self.daemon.replay.register_written(reg, value & M)
        return True

    # --- memory (side-effect free reads) -------------------------------------------------

    def read_memory(self, addr: int, length: int) -> bytes:
        bus = self.machine.bus
        out = bytearray()
        end = min(addr + length, 1 << 32)
        while addr < end:
            region = bus.find(addr)
            if region is None:
                break
            stop = min(end, region.end)
            if region.device is None:
                out += bus.read_bytes(addr, stop - addr)
            else:
                while addr < stop:
                    word = addr & ~3
                    value = bus.peek(word, 4).to_bytes(4, "little")
                    chunk = value[addr - word : min(stop, word + 4) - word]
                    out += chunk
                    addr += len(chunk)
            addr = stop
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> bool:
        if not self._write_memory(addr, data):
            return False
        if self.daemon.replay is not None:
            self.daemon.replay.memory_written(addr, data)
        return True

    def _write_memory(self, addr: int, data: bytes) -> bool:
        try:
            self.machine.bus.debug_write(addr, data)
        except BusError:
            return False
        return True

    def target_xml(self) -> str:
        return self._xml

    def memory_map(self) -> str:
        regions = "".join(f'<memory type="ram" start="{start:#x}" length="{r.size:#x}"/>'
                          for r in self.machine.bus.regions for start in _gdb_views(r.base))
        return ('<?xml version="1.0"?><!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD '
                'GDB Memory Map V1.0//EN" "http://sourceware.org/gdb/gdb-memory-map.dtd">'
                f"<memory-map>{regions}</memory-map>")

    # --- breakpoints and watchpoints ------------------------------------------------------

    def breakpoints(self) -> EmudTarget:
        return self

    def watchpoints(self) -> EmudTarget:
        return self

    def add_breakpoint(self, addr: int, hardware: bool) -> bool:
        (self._hw if hardware else self._sw)[addr] += 1
        self.hart.set_breakpoint(addr, True)
        return True

    def remove_breakpoint(self, addr: int, hardware: bool) -> bool:
        points = self._hw if hardware else self._sw
        if points[addr] <= 0:
            return False
        points[addr] -= 1
        if not self._hw[addr] and not self._sw[addr]:
            self.hart.set_breakpoint(addr, False)
        return True

    def add_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool:
        if length <= 0 or addr + length > 1 << 32:
            return False
        key = (kind, addr, length)
        self._watch[key] += 1
        if self._watch[key] == 1:
            self.hart.add_watchpoint(Watchpoint(addr, length, kind.value))
        return True

    def remove_watchpoint(self, kind: WatchKind, addr: int, length: int) -> bool:
        key = (kind, addr, length)
        if key not in self._watch:
            return False
        self._watch[key] -= 1
        if not self._watch[key]:
            del self._watch[key]  # no zero counts left behind to grow with every address
            self.hart.remove_watchpoint(Watchpoint(addr, length, kind.value))
        return True

    # --- reverse execution (emud/replay) ------------------------------------------------

    def reverse(self) -> EmudTarget | None:
        return self if self.daemon.replay is not None else None

    def reverse_step(self) -> StopReason:
        replay = self.daemon.replay
        assert replay is not None
        return Stepped() if replay.reverse_step() else HistoryEnd(begin=True)

    def reverse_continue(self) -> None:
        """The latest breakpoint hit or watchpoint trigger before here, found by the
        daemon's loop a slice at a time; the stop is reported when the search ends.  A
        watchpoint leaves the hart just after the writing instruction, with the data
        address.  Ctrl-C (or any run control) cancels it back to where it started."""
        replay = self.daemon.replay
        assert replay is not None
        self.daemon.start_job(_ReverseContinue(self, replay.reverse_search()))

    def _hit_reason(self, hit: Hit | None) -> StopReason:
        if hit is None:
            return HistoryEnd(begin=True)
        stop = hit.stop
        if stop.kind == BREAK:
            return BreakpointHit(hardware=stop.addr in self._hw and stop.addr not in self._sw)
        return WatchpointHit(WatchKind(stop.kind), stop.addr)

    # --- monitor ----------------------------------------------------------------------

    def monitor(self) -> EmudTarget:
        return self

    def monitor_command(self, command: str) -> str:
        """gdb's `monitor …`: the same HMP registry as the shell and QMP."""
        try:
            return self._monitor.execute_hmp_now(command)
        except MonitorError as e:
            return hmp_error_text(e)
        except Exception as e:  # a failing command must not cost the gdb session
            return f"Error: internal error in '{command}': {e!r}\n"


class _ReverseContinue:
    """A reverse-continue as a daemon job: the search, then its stop to gdb."""

    def __init__(self, target: EmudTarget, search: Travel[Hit | None]) -> None:
        self.target = target
        self.search = search
        # Cancelled by run control or by input arriving (the engine): SIGINT to gdb.
        search.on_cancel = lambda: target.server.report_stop(Interrupted())

    def advance(self) -> bool:
        if not self.search.advance():
            return False
        if not self.search.cancelled:
            self.target.server.report_stop(self.target._hit_reason(self.search.result))
        return True

    def cancel(self) -> None:
        self.search.cancel()


async def start_gdb_server(daemon: Daemon, sock: socket.socket) -> GdbServer:
    """Serve gdb on `sock`, a listening socket the caller bound (emud.listen)."""
    # Every local user can reach a TCP port: it is a shared door (no host files).
    target = EmudTarget(daemon, shared_door=sock.family != socket.AF_UNIX)
    await target.server.serve(sock)
    return target.server

