"""Sdtrig debug triggers: mcontrol (type 2) address matches that raise breakpoint exceptions.

The CSRs are tselect, tdata1, tdata2, tdata3 and tinfo (debug spec 0.13/1.0, with
QEMU 7.2's WARL choices where the spec leaves them open):
- two triggers, as QEMU 7.2 has (RV_MAX_TRIGGERS): enough for one execute and one
  data match at a time, and few enough that every access checks them cheaply;
- tselect ignores a value >= 2; tinfo says type 2 only; tdata3 reads 0, writes ignored;
- tdata1 keeps type 2: a write with another type (0 too) is ignored, as QEMU does;
  dmode, action, chain, match, timing, select and hit read 0 (no debug mode: only
  action 0, "raise a breakpoint exception"; match 0, "address equals tdata2";
  timing "before": the instruction has no effect); sizelo, m, u, execute, store
  and load are kept.

A trigger fires when its privilege bit (m or u) names the current privilege.  An
M-mode trigger fires only while mstatus.MIE is 1 (the debug spec's alternative to
tcontrol, which QEMU 7.2 does not have): the trap clears MIE, so a trigger never
fires again inside its own handler, and mret re-enables it.  A load/store trigger
matches when the access covers the byte at tdata2 (and has the size sizelo asks
for, if any); mtval is then tdata2, the matched address, like QEMU's watchpoint
hit address; an execute trigger's mtval is the pc.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

from emud.cpu.csr import PRV_M, PRV_U


class TriggerCsr(IntEnum):
    TSELECT = 0x7A0
    TDATA1 = 0x7A1
    TDATA2 = 0x7A2
    TDATA3 = 0x7A3
    TINFO = 0x7A4


TRIGGER_COUNT = 2
TYPE_MCONTROL = 2
TYPE_SHIFT = 28
TINFO_VALUE = 1 << TYPE_MCONTROL
RESET_TDATA1 = TYPE_MCONTROL << TYPE_SHIFT

# mcontrol fields (RV32)
SIZELO = 3 << 16
M_BIT = 1 << 6
U_BIT = 1 << 3
EXECUTE, STORE, LOAD = 1 << 2, 1 << 1, 1 << 0
WRITABLE = SIZELO | M_BIT | U_BIT | EXECUTE | STORE | LOAD
SIZES = (0, 1, 2, 4)  # sizelo -> the access size it matches (0: any)


def mcontrol_write(value: int) -> int | None:
    """The tdata1 value a write leaves (None: ignored, the old value stays)."""
    if value >> TYPE_SHIFT != TYPE_MCONTROL:
        return None
    return RESET_TDATA1 | (value & WRITABLE)


def privilege_bit(priv: int) -> int:
    return {PRV_M: M_BIT, PRV_U: U_BIT}.get(priv, 0)


class Triggers:
    """The trigger CSRs; `changed` runs when what must be checked changes."""

    def __init__(self, changed: Callable[[], None] = lambda: None) -> None:
        self.tselect = 0
        self.tdata1 = [RESET_TDATA1] * TRIGGER_COUNT
        self.tdata2 = [0] * TRIGGER_COUNT
        self.changed = changed
        self.execute: frozenset[int] = frozenset()  # pcs with an execute trigger
        self.loads: frozenset[int] = frozenset()  # addresses with a load trigger
        self.stores: frozenset[int] = frozenset()  # addresses with a store trigger

    def reset(self) -> None:
        self.tselect = 0
        self.tdata1[:] = [RESET_TDATA1] * TRIGGER_COUNT
        self.tdata2[:] = [0] * TRIGGER_COUNT
        self.update()

    @property
    def configured(self) -> bool:
        """Whether any state differs from reset (a snapshot then carries it)."""
        return bool(self.tselect or any(self.tdata2)
                    or any(t != RESET_TDATA1 for t in self.tdata1))

    @property
    def armed(self) -> bool:
        return bool(self.execute or self.loads or self.stores)

    # --- CSRs ------------------------------------------------------------------------

    def read(self, csr: int) -> int | None:
        """The CSR's value, or None if it is not a trigger CSR."""
        match csr:
            case TriggerCsr.TSELECT:
                return self.tselect
            case TriggerCsr.TDATA1:
                return self.tdata1[self.tselect]
            case TriggerCsr.TDATA2:
                return self.tdata2[self.tselect]
            case TriggerCsr.TDATA3:
                return 0
            case TriggerCsr.TINFO:
                return TINFO_VALUE
        return None

    def write(self, csr: int, value: int) -> bool:
        """False if it is not a trigger CSR."""
        match csr:
            case TriggerCsr.TSELECT:
                if value < TRIGGER_COUNT:
                    self.tselect = value
            case TriggerCsr.TDATA1:
                new = mcontrol_write(value)
                if new is not None:
                    self.tdata1[self.tselect] = new
                    self.update()
            case TriggerCsr.TDATA2:
                self.tdata2[self.tselect] = value
                self.update()
            case TriggerCsr.TDATA3 | TriggerCsr.TINFO:  # WARL 0 and read-only
                pass
            case _:
                return False
        return True

    def update(self) -> None:
        def armed(kind: int) -> list[int]:
            return [addr for ctrl, addr in zip(self.tdata1, self.tdata2, strict=True)
                    if ctrl & kind and ctrl & (M_BIT | U_BIT)]

        before = (self.execute, self.loads, self.stores)
        self.execute = frozenset(armed(EXECUTE))
        self.loads = frozenset(armed(LOAD))
        self.stores = frozenset(armed(STORE))
        if (self.execute, self.loads, self.stores) != before:
            self.changed()

    # --- matching --------------------------------------------------------------------

    @staticmethod
    def _enabled(ctrl: int, priv: int, mie: bool) -> bool:
        bit = privilege_bit(priv)
        return bool(ctrl & bit) and (bit != M_BIT or mie)

    def fires_execute(self, pc: int, priv: int, mie: bool) -> bool:
        return any(ctrl & EXECUTE and addr == pc and self._enabled(ctrl, priv, mie)
                   for ctrl, addr in zip(self.tdata1, self.tdata2, strict=True))

    def match_access(self, addr: int, size: int, store: bool, priv: int,
                     mie: bool) -> int | None:
        """The mtval of the trigger this access fires (tdata2), or None."""
        kind = STORE if store else LOAD
        for ctrl, target in zip(self.tdata1, self.tdata2, strict=True):
            want = SIZES[(ctrl & SIZELO) >> 16]
            if (ctrl & kind and addr <= target < addr + size and (not want or want == size)
                    and self._enabled(ctrl, priv, mie)):
                return target
        return None
