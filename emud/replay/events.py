"""The inputs of a recorded run: what entered the machine from outside, and when.

In icount mode the machine is a pure function of its inputs, so a run is its
initial state plus this log.  Each event carries the instruction count and the
virtual time of the boundary where it happened (time can move without the
count while the hart sleeps in WFI, so both are needed to find the boundary
again).  Encoding is small pure functions: `encode` / `decode` for the session
file, `apply` to deliver an event to a machine.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from emud.cpu.csr import PRV_M, PRV_U
from emud.cpu.interp import Trap
from emud.machine import Machine
from emud.memory import BusError

M = 0xFFFF_FFFF
CSR_REG = 0x1000  # CSR_REG + csr number: a CSR (csr numbers are 12 bits)
PC_REG = 32
PRIV_REG = 0x2000  # the privilege level (gdb's $priv)


class Kind(IntEnum):
    SERIAL = 1  # host input handed to input port `a` (Machine.input_ports): data
    MEMORY = 2  # a debugger/monitor write: `a` is the address, data the bytes
    REGISTER = 3  # a debugger/monitor register write: `a` register, `b` value
    RESET = 4  # system_reset from a control plane
    MASKED_STEP = 5  # a debugger single step with interrupts masked (one instruction)


@dataclass(frozen=True)
class Event:
    icount: int
    now_ns: int
    kind: Kind
    a: int = 0
    b: int = 0
    data: bytes = b""


_HEAD = struct.Struct("<QQBQQI")  # icount, now_ns, kind, a, b, len(data)


def encode(event: Event) -> bytes:
    return _HEAD.pack(event.icount, event.now_ns, event.kind, event.a, event.b,
                      len(event.data)) + event.data


def decode(payload: bytes) -> Event:
    """ValueError names what is wrong with a damaged event."""
    if len(payload) < _HEAD.size:
        raise ValueError(f"event record of {len(payload)} bytes is too short")
    icount, now_ns, kind, a, b, size = _HEAD.unpack_from(payload)
    if size != len(payload) - _HEAD.size:
        raise ValueError("event record length does not match its data")
    try:
        kind = Kind(kind)
    except ValueError:
        raise ValueError(f"unknown event kind {kind}") from None
    return Event(icount, now_ns, kind, a, b, payload[_HEAD.size :])


def write_memory(machine: Machine, addr: int, data: bytes) -> bool:
    """A control plane's memory write, replayed as it was done (AddressSpace.debug_write)."""
    try:
        machine.bus.debug_write(addr, data)
    except BusError:
        return False
    return True


def write_register(machine: Machine, reg: int, value: int) -> bool:
    """A control plane's register write: x1..x31, PC_REG, PRIV_REG or CSR_REG + csr
    (x0 takes nothing); False where the hart refuses it.  gdb's writes and their replay
    are this one function."""
    hart = machine.hart
    value &= M
    if 0 < reg < 32:
        hart.x[reg] = value
    elif reg == PC_REG:
        hart.pc = value & ~1
    elif reg == PRIV_REG:
        if value not in (PRV_U, PRV_M):
            return False  # S-mode (1) and 2 are not implemented
        hart.set_priv(value)
    elif CSR_REG <= reg < PRIV_REG:
        try:
            hart.csr_write(reg - CSR_REG, value, 0)
        except Trap:
            return False
    elif reg:
        return False
    return True


def apply(machine: Machine, event: Event) -> None:
    """Deliver `event` (not MASKED_STEP, which the player runs itself)."""
    match event.kind:
        case Kind.SERIAL:
            ports = machine.input_ports
            if event.a < len(ports):
                ports[event.a].deliver(event.data)
        case Kind.MEMORY:
            write_memory(machine, event.a, event.data)
        case Kind.REGISTER:
            write_register(machine, event.a, event.b)
        case Kind.RESET:
            machine.reset()
        case Kind.MASKED_STEP:
            pass
