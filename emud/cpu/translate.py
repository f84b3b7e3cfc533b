"""The `translate` accelerator: hot guest code becomes Python functions.

A *region* is the set of basic blocks reachable from a hot entry pc by direct
edges (branches, jumps, calls, and returns to a call site in the region).  It
is turned into the source of one function `region(x, r) -> (next_pc, r)` and
compiled: registers live in locals (loaded from `x` on entry, the assigned
ones written back on exit), the blocks are laid out in reverse postorder
inside a Python loop, guest loops become nested Python loops, and `r`, the
instructions the run may still retire, is charged per block and checked at
the entry and at loop heads.

Only plain computation and RAM accesses are translated.  Everything else stays
with the reference interpreter (`Hart.interpret`): CSR, system, atomic and
fence.i instructions end a block, and a load or store whose address is not
plain RAM (a device, misaligned, outside RAM, or a store to a flagged granule)
leaves the region *before* it, with all earlier instructions retired.  Such an
exit returns an odd pc, meaning "run the instruction at pc & ~1 through the
interpreter".  The interpreter thus performs every trap, clock sync and
interrupt check, and a run retires the same instructions, with the same
icount at every interrupt, as the interpreter alone.

Cold code runs in the interpreter; a pc becomes a region entry after `HOT`
visits and once it has run PAYBACK instructions per instruction of its region
(whose blocks are those the interpreter has run).  A region that runs under
MIN_RUN instructions per call over its first REVIEW calls is dropped for good;
a call that goes on into another region counts as long enough, since it does not
go back through the run loop.  Code that COPIES regions already hold, at the
entry of a region that passed its review, is left to that region rather than
copied again, so that a loop head shared by hundreds of switch cases is
compiled a few times, not once per case.
Only counts decide, so runs stay repeatable.  Emission (`Emitter`) is a pure
function of the discovered code and the RAM config, so compiled regions can be
cached: with a cache, an entry's first visit recalls the region last made there
(`_recall`: its code, with the code bytes it came from, which must match RAM),
so a run of an image that ran before skips the warm-up.  Sources that differ
only in their literals share one compile() (`shapes.Shapes`).  RAM granules with
translated code are flagged FLAG_CODE, so a region's store there leaves the
region like any store to a flagged granule; the interpreter's store then drops
exactly the regions holding an instruction it overlaps (`invalidate`); fence.i
drops them all.  A region also leaves before a breakpoint or an execute
trigger's pc, so the interpreter stops there, and setting or clearing one drops
the regions that contain or stop at it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import types
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from emud import log
from emud.cpu import decode as d
from emud.cpu.interp import ALU_RR, LOADS, STORES
from emud.cpu.shapes import Shapes
from emud.memory import FLAG_CODE, FLAG_LOAD, FLAG_SHIFT, GRANULE

if TYPE_CHECKING:
    from emud.cpu.hart import Hart

Region = Callable[[list[int], int], tuple[int, int]]

M = 0xFFFF_FFFF
S = 0x8000_0000
HOT = 8  # dispatcher visits before a pc gets a region
MAX_BLOCKS = 32  # enough for a whole recursive function (quicksort), epilogue included
MAX_BLOCK_INSNS = 64
MAX_REGION_INSNS = 200
PAYBACK = 2  # instructions an entry must have run per instruction of its region
REVIEW = 32  # region calls after which its instructions per call are judged
MIN_RUN = 6  # fewer instructions per call than this: entering the region costs more
COPY_INSNS = 4  # a forward jump to a block this short runs a copy of it in place
COPIES = 32  # regions that may hold a copy of the code at another region's entry
STRETCH = 64  # instructions the interpreter runs at once from a demoted entry
NOT_TRANSLATABLE = -(1 << 62)  # heat of an entry whose first instruction needs the interpreter
MAX_LOOP_DEPTH = 4  # Python allows 20 statically nested blocks
BAIL = "@BAIL@"  # placeholder in emitted lines: leave before this instruction
NAMESPACE = ("u32", "u16", "s16", "u8", "s8", "flags")  # RAM views, bound as defaults
UNPACK_ALL = 12  # from this many registers, one `_, x1, ..., x31 = x` beats loading each
HEAD = 16  # bytes at an entry that tell one image's code there from another's (entry_key)
KEY_FORMAT = b"emud-region-2"  # bump when the meaning of a key's inputs changes

# Signed a < b from the unsigned values: by the sign of one, then of the other.  Faster
# than comparing a ^ S with b ^ S, or picking the order by the sign of a ^ b: those
# make an xor, which CPython does not specialise, and two-digit ints.
SIGNED_LT = (f"({{a}} < {{b}} if {{b}} < {S} else False) if {{a}} < {S} "
             f"else ({{b}} < {S} or {{a}} < {{b}})")
SIGNED_GE = (f"({{a}} >= {{b}} if {{b}} < {S} else True) if {{a}} < {S} "
             f"else ({{b}} >= {S} and {{a}} >= {{b}})")
# Register-register operations as Python expressions over {a} and {b} (both in 0..M).
OP_EXPR: dict[tuple[int, int], str] = {
    (0x00, 0): f"({{a}} + {{b}}) & {M}",
    (0x20, 0): f"({{a}} - {{b}}) & {M}",
    (0x00, 1): f"({{a}} << ({{b}} & 31)) & {M}",
    (0x00, 2): f"1 if ({SIGNED_LT}) else 0",
    (0x00, 3): "1 if {a} < {b} else 0",
    (0x00, 4): "{a} ^ {b}",
    (0x00, 5): "{a} >> ({b} & 31)",
    (0x20, 5): f"(({{a}} ^ {S}) - {S} >> ({{b}} & 31)) & {M}",
    (0x00, 6): "{a} | {b}",
    (0x00, 7): "{a} & {b}",
    (0x01, 0): f"({{a}} * {{b}}) & {M}",
    (0x01, 1): "mulh({a}, {b})",
    (0x01, 2): "mulhsu({a}, {b})",
    (0x01, 3): "({a} * {b}) >> 32",
    # Signed division by a positive divisor inline, a negative dividend too (C
    # truncates: -(|a| // b)); the rest (b <= 0) through the interpreter's helpers.
    (0x01, 4): f"(({{a}} // {{b}}) if {{a}} < {S} else -(({M + 1} - {{a}}) // {{b}}) & {M}) "
               f"if 0 < {{b}} < {S} else div({{a}}, {{b}})",
    (0x01, 5): f"{{a}} // {{b}} if {{b}} else {M}",
    (0x01, 6): f"(({{a}} % {{b}}) if {{a}} < {S} else -(({M + 1} - {{a}}) % {{b}}) & {M}) "
               f"if 0 < {{b}} < {S} else rem({{a}}, {{b}})",
    (0x01, 7): "{a} % {b} if {b} else {a}",
}
HELPERS = {"mulh": ALU_RR[(0x01, 1)], "mulhsu": ALU_RR[(0x01, 2)],
           "div": ALU_RR[(0x01, 4)], "rem": ALU_RR[(0x01, 6)]}
# funct3 -> comparison templates for branches.
BRANCH_EXPR = {
    0: "{a} == {b}",
    1: "{a} != {b}",
    4: SIGNED_LT,
    5: SIGNED_GE,
    6: "{a} < {b}",
    7: "{a} >= {b}",
}
# Cheaper forms of comparisons against x0 (rs2 = 0).
BRANCH_ZERO = {0: "not {a}", 1: "{a}", 4: f"{{a}} >= {S}", 5: f"{{a}} < {S}", 6: "False", 7: "True"}
# Typed views of RAM by (size, signed): name, index shift, mask needed on the value.
LOAD_VIEW = {(4, False): ("u32", 2, ""), (2, True): ("s16", 1, f" & {M}"),
             (2, False): ("u16", 1, ""), (1, True): ("s8", 0, f" & {M}"), (1, False): ("u8", 0, "")}
STORE_VIEW = {4: ("u32", 2, ""), 2: ("u16", 1, " & 65535"), 1: ("u8", 0, " & 255")}


class Insn(NamedTuple):
    pc: int
    word: int  # 32-bit form (RVC expanded)
    length: int

    @property
    def npc(self) -> int:
        return (self.pc + self.length) & M


class Discovery(NamedTuple):
    """What `_discover` found from an entry: with the Config, all that emission reads."""
    entry: int
    leaders: tuple[int, ...]  # sorted
    returns: tuple[int, ...]  # sorted: return addresses of calls in the region
    insns: tuple[tuple[int, Insn | None], ...]  # by pc; None: needs the interpreter


# _discover's result: block leaders, return addresses, instructions (None: interpreter).
Discovered = tuple[set[int], set[int], dict[int, Insn | None]]


class Config(NamedTuple):
    """The translator's settings that emission reads: RAM base and size, and whether
    loads test FLAG_LOAD (while something watches loads)."""
    base: int
    size: int
    watch_loads: bool = False


class RegionCache(Protocol):
    """Where the records of compiled regions may persist (emud/cpu/codecache.py): values
    marshal writes; get None: a miss."""
    def get(self, key: bytes) -> object: ...
    def put(self, key: bytes, value: object) -> None: ...


def entry_key(config: Config, entry: int, head: bytes) -> bytes:
    """The cache key of the region last made at entry (`Translator._recall`), whose code
    starts with the bytes `head`: other code at the same pc (another image's) has a
    record of its own.  With the code bytes the record holds, it names every input of
    emission (`Emitter.source` is a pure function of the Config and the Discovery, and
    the cache salts keys with the translator's sources): a record is good wherever its
    key and code bytes match."""
    inputs = (FLAG_SHIFT, FLAG_CODE, FLAG_LOAD, tuple(config), entry)
    return hashlib.sha256(KEY_FORMAT + repr(inputs).encode() + head).digest()


# What the cache keeps per entry: the region's instructions ((pc, word, length), length 0:
# an exit), the code bytes it was built from as (address, bytes) runs, which a recall
# compares with RAM, and its compiled code.
Record = tuple[tuple[tuple[int, int, int], ...], tuple[tuple[int, bytes], ...], types.CodeType]


# The register fields each major opcode reads and writes (x0 aside).
WRITES_RD = frozenset((d.OP_LUI, d.OP_AUIPC, d.OP_IMM, d.OP_OP, d.OP_LOAD, d.OP_JAL, d.OP_JALR))
ACCESSES = frozenset((d.OP_LOAD, d.OP_STORE))
READS_RS1 = frozenset((d.OP_IMM, d.OP_OP, d.OP_LOAD, d.OP_STORE, d.OP_BRANCH, d.OP_JALR))
READS_RS2 = frozenset((d.OP_OP, d.OP_STORE, d.OP_BRANCH))


def _registers(insns: list[Insn]) -> tuple[list[int], list[int]]:
    """The registers the instructions name (read or written), and those they write."""
    used, written = set(), set()
    for insn in insns:
        w = insn.word
        op = w & 0x7F
        if op in WRITES_RD:
            written.add(w >> 7 & 31)  # rd, rs1 and rs2 (decode's, inline: it runs a lot)
        if op in READS_RS1:
            used.add(w >> 15 & 31)
        if op in READS_RS2:
            used.add(w >> 20 & 31)
    written.discard(0)
    used |= written
    used.discard(0)
    return sorted(used), sorted(written)


def _reg(n: int, known: dict[int, int] | None = None) -> str:
    """A register as an operand: its value where known."""
    if known and n in known:
        return str(known[n])
    return f"x{n}" if n else "0"


def _signed(ge: bool, a: str, b: str) -> str:
    """Signed a < b (a >= b if `ge`) of two operands (_reg's).  Against a constant k
    the signed order is one range of unsigned values: one chained compare."""
    if b.isdigit():  # a < k: a in k..S-1 is not, for k >= S a in S..k-1 is
        k = int(b)
        inside, less = (f"{k} <= {a} < {S}", False) if k < S else (f"{S} <= {a} < {k}", True)
    elif a.isdigit():  # k < b: b in k+1..S-1 is, for k >= S b in S..k is not
        k = int(a)
        inside, less = (f"{k} < {b} < {S}", True) if k < S else (f"{S} <= {b} <= {k}", False)
    else:
        return (SIGNED_GE if ge else SIGNED_LT).format(a=a, b=b)
    return inside if less != ge else f"not {inside}"


# OP-IMM funct3 -> the register-register operation it is, with the immediate as rs2.
IMM_AS_RR = {0: (0x00, 0), 2: (0x00, 2), 3: (0x00, 3), 4: (0x00, 4), 6: (0x00, 6),
             7: (0x00, 7), 1: (0x00, 1)}


def _fold(insn: Insn, known: dict[int, int]) -> int | None:
    """The value an instruction writes to rd (not x0) when it depends on constants only."""
    w = insn.word
    op = w & 0x7F
    if not w & 0xF80:  # rd is x0
        return None
    if op == d.OP_LUI:
        return d.imm_u(w)
    if op == d.OP_AUIPC:
        return (insn.pc + d.imm_u(w)) & M
    if op not in (d.OP_IMM, d.OP_OP) or not known and w & 0xF8000:  # rs1 unknown
        return None
    rs1 = w >> 15 & 31
    a = known.get(rs1) if rs1 else 0
    if a is None:
        return None
    f3 = w >> 12 & 7
    if op == d.OP_IMM:
        imm = d.imm_i(w)
        if f3 == 5:
            f7 = d.funct7(w)
            if f7 not in (0, 0x20):
                return None
            return ALU_RR[(f7, 5)](a, imm & 31)
        if f3 == 1 and d.funct7(w):
            return None
        return ALU_RR[IMM_AS_RR[f3]](a, imm & (31 if f3 == 1 else M))
    b = 0 if not d.rs2(w) else known.get(d.rs2(w))
    fn = ALU_RR.get((d.funct7(w), f3))
    return None if b is None or fn is None else fn(a, b)


class Translator:
    def __init__(self, hart: Hart, cache: RegionCache | None = None) -> None:
        """`cache`: where compiled regions are looked up before translating and stored
        after (None: every region is compiled here)."""
        self.hart = hart
        self.ram = hart.bus.ram
        self.cache = cache
        self.hot = HOT
        self.regions: dict[int, Region] = {}
        self.payback = PAYBACK  # 0: translate at `hot` visits, whatever the size
        self.review = REVIEW  # 0: keep every region
        self.heat: dict[int, int] = {}  # entry -> dispatcher visits
        self.needed: dict[int, int] = {}  # entry -> visits it needs for its region's size
        self.runs: dict[int, int] = {}  # entry -> calls of its region, up to REVIEW
        self.ran: dict[int, int] = {}  # entry -> instructions its region ran in those calls
        self.demoted: set[int] = set()  # entries whose regions did not pay
        self.recalled: set[int] = set()  # entries looked up in the cache's records
        self.lengths: dict[int, int] = {}  # cold pc -> instructions to its block end
        # What regions depend on: pc -> (length, entries) of each translated instruction,
        # pc -> entries of the regions that leave for the interpreter at it, and entry ->
        # (its instructions' pcs, its exits' pcs), to undo both when a region goes.
        self.code: dict[int, tuple[int, set[int]]] = {}
        self.exits: dict[int, set[int]] = {}
        self.members: dict[int, tuple[list[int], list[int]]] = {}
        ram = self.ram
        self._emitters: dict[Config, Emitter] = {}
        self.shapes = Shapes()  # compile() once per shape of region source
        self.namespace: dict[str, object] = {
            **{name: getattr(ram, name) for name in NAMESPACE}, **HELPERS}

    @property
    def emitter(self) -> Emitter:
        """The emitter for the settings now (the hart's load watching may change)."""
        config = Config(self.ram.base, self.ram.size, self.hart.watch_loads)
        emitter = self._emitters.get(config)
        if emitter is None:
            emitter = self._emitters[config] = Emitter(config)
        return emitter

    # --- the run loop -----------------------------------------------------------

    def run(self, budget: int) -> int:
        """Hart.interpret's contract: retire up to `budget` instructions, the same way."""
        hart, clock, regions, x = self.hart, self.hart.clock, self.regions, self.hart.x
        demoted = self.demoted
        pc = hart.pc
        done = committed = 0
        irq = hart._deliverable_irq() is not None
        # Heat is counted only where a block starts, not where a slice or a step left pc.
        at_block = False
        while done < budget and not hart.stop_requested and not hart.waiting:
            # Translated code does not ask PMP: while it may deny, the interpreter runs.
            region = None if irq or hart.checked else regions.get(pc)
            if region is None and at_block and not irq and not hart.checked:
                region = self._hot(pc)
            if region is not None:
                # Regions chain without the checks above: none of them can change
                # while only translated code runs (a region never touches a CSR or a device).
                # No odd pc is an entry, and with no budget left a region leaves at once
                # by its entry's check (odd): one lookup ends the chain.
                left = budget - done
                while True:
                    pc, left = region(x, left)
                    if (region := regions.get(pc)) is None:
                        break
                done = budget - left
                if not pc & 1:
                    at_block = True
                    continue
                pc ^= 1  # the instruction at pc needs the interpreter
                # At the end of the budget, let the interpreter finish (no regions mid-loop).
                steps = 1 if budget - done > MAX_BLOCK_INSNS else budget - done
                at_block = False
            elif hart.checked:
                steps, at_block = budget - done, False
            elif irq:
                steps, at_block = 1, False
            elif pc in demoted:  # code that did not pay: the interpreter's, for a stretch
                steps, at_block = STRETCH, False
            else:
                steps, at_block = self._block_length(pc), True
            if done == budget:
                break
            # The interpreter sees an exact clock, takes pending interrupts, traps, syncs.
            clock.advance_insns(done - committed)
            hart.pc = pc
            done += hart.interpret(min(steps, budget - done))
            committed = done
            pc = hart.pc
            if hart.debug_stop is not None:
                break
            if done < budget:
                budget = done + clock.insns_until_deadline(budget - done)
            irq = bool(hart.mip & hart.mie) and hart._deliverable_irq() is not None
        clock.advance_insns(done - committed)
        hart.pc = pc
        return done

    def _hot(self, pc: int) -> Region | None:
        """The region for a block start the interpreter is about to run, if it is time.

        An entry is translated once it has `hot` visits and has run (visits times its
        block length) `payback` instructions per instruction of its region: the region
        costs compile() time in proportion to its size, and earns it back per
        instruction it runs.  Only counts decide, never time: runs stay repeatable.
        """
        heat = self.heat.get(pc, 0) + 1
        self.heat[pc] = heat
        # Not while -d in_asm logs translations: its log stays what the guest alone makes.
        if heat == 1 and self.cache is not None and not log.in_asm and pc not in self.recalled:
            region = self._recall(pc)
            if region is not None:
                return region
        if heat < self.hot or heat < self.needed.get(pc, 0):
            return None
        found = self._discover(pc, ran_only=True)
        size = sum(1 for insn in found[2].values() if insn is not None)
        need = -(-self.payback * size // self._block_length(pc))
        if heat < need:
            self.needed[pc] = need
            return None
        region = self.translate(pc, discovered=found)
        if region is None:
            self.heat[pc] = NOT_TRANSLATABLE
        return region

    def _reviewed(self, entry: int, region: Region) -> Region:
        """Region, counting its calls until its review is over: its first `review` calls
        decide whether it stays (the run loop calls it like any region, at no cost to
        regions past their review)."""
        regions, review = self.regions, self._review

        @functools.wraps(region)
        def reviewed(x: list[int], r: int) -> tuple[int, int]:
            pc, rest = region(x, r)
            review(entry, region, r - rest, not pc & 1 and pc in regions)
            return pc, rest
        return reviewed

    def _review(self, entry: int, region: Region, ran: int, chained: bool) -> None:
        """Count one of the first `review` calls of entry's region, which ran `ran`
        instructions; after the last, demote it if they ran too few per call, else call
        it directly from now on.  A call that went on into another region (`chained`)
        did not pay for leaving translated code, so it counts as long enough: short
        regions that other regions share (a loop head behind hundreds of switch cases)
        stay, and do not send the loop to the interpreter.
        """
        calls = self.runs[entry] = self.runs.get(entry, 0) + 1
        ran = self.ran[entry] = self.ran.get(entry, 0) + (max(ran, MIN_RUN) if chained else ran)
        if calls >= self.review:
            if ran < MIN_RUN * calls:
                self._demote(entry)
            else:
                self.regions[entry] = region

    def _demote(self, entry: int) -> None:
        """The region ran too few instructions per call to pay for entering it: the
        interpreter runs its entry from now on (until a flush)."""
        if entry in self.regions:
            # Its granules keep FLAG_CODE: stores there take the slow path, which is exact.
            self._drop(entry)
        self.heat[entry] = NOT_TRANSLATABLE
        self.demoted.add(entry)

    def _block_length(self, pc: int) -> int:
        """How many instructions the interpreter runs for a cold block (a hint only)."""
        n = self.lengths.get(pc)
        if n is None:
            n, at = 1, pc
            while n < MAX_BLOCK_INSNS and (insn := self._fetch(at)) is not None \
                    and insn.word & 0x7F not in (d.OP_BRANCH, d.OP_JAL, d.OP_JALR, d.OP_SYSTEM):
                n, at = n + 1, insn.npc
            self.lengths[pc] = n
        return n

    # --- invalidation -----------------------------------------------------------

    def invalidate(self, addr: int, size: int) -> list[int]:
        """Bytes [addr, addr+size) changed, or a breakpoint or execute trigger there did:
        drop the regions with an instruction overlapping them or an exit at one of them.
        Returns the pcs no longer translated in any region (their granules may lose
        FLAG_CODE).  Entries there that could not be translated may be translated again."""
        code, exits, end = self.code, self.exits, addr + size
        if size <= GRANULE:
            at = [c[1] for pc in d.starts_overlapping(addr, size)
                  if (c := code.get(pc)) is not None and pc + c[0] > addr]
            at += [exits[pc] for pc in range(addr, end) if pc in exits]
            cold = [pc for pc in range(addr & ~1, end, 2) if pc in self.heat]
        else:
            at = [entries for pc, (n, entries) in code.items() if pc < end and pc + n > addr]
            at += [entries for pc, entries in exits.items() if addr <= pc < end]
            cold = [pc for pc in self.heat if addr <= pc < end]
        for pc in cold:
            if self.heat[pc] == NOT_TRANSLATABLE:
                del self.heat[pc]
        gone: list[int] = []
        for entry in {entry for entries in at for entry in entries}:
            gone += self._drop(entry)
        return gone

    def _drop(self, entry: int) -> list[int]:
        del self.regions[entry]
        pcs, exit_pcs = self.members.pop(entry)
        gone = []
        for pc in pcs:
            entries = self.code[pc][1]
            entries.discard(entry)
            if not entries:
                del self.code[pc]
                gone.append(pc)
        for pc in exit_pcs:
            entries = self.exits[pc]
            entries.discard(entry)
            if not entries:
                del self.exits[pc]
        return gone

    def translated(self, addr: int, size: int) -> bool:
        code = self.code
        return any((c := code.get(pc)) is not None and pc + c[0] > addr
                   for pc in d.starts_overlapping(addr, size))

    def flush(self) -> None:
        ram = self.ram
        for pc, (n, _) in self.code.items():
            for g in ram.granules(pc, n):
                ram.flags[g] &= ~FLAG_CODE
        self.code.clear()
        self.exits.clear()
        self.members.clear()
        self.regions.clear()
        self.heat.clear()
        self.needed.clear()
        self.runs.clear()
        self.ran.clear()
        self.demoted.clear()
        self.lengths.clear()

    # --- translation ------------------------------------------------------------

    def _fetch(self, pc: int) -> Insn | None:
        ram = self.ram
        if not ram.contains(pc, 2):
            return None
        low = ram.u16[(pc - ram.base) >> 1]
        if low & 3 != 3:
            return Insn(pc, d.expand_compressed(low), 2)
        if not ram.contains(pc, 4):
            return None
        return Insn(pc, low | ram.u16[(pc + 2 - ram.base) >> 1] << 16, 4)

    def translate(self, entry: int, ran_only: bool = False,
                  discovered: Discovered | None = None) -> Region | None:
        """Compile the region at `entry`; None when its first instruction needs the
        interpreter.  `ran_only`: leave out the blocks the interpreter has not run;
        `discovered`: what a discovery from entry already gave (_hot's)."""
        leaders, returns, insns = discovered or self._discover(entry, ran_only)
        if insns.get(entry) is None:
            return None
        found = Discovery(entry, tuple(sorted(leaders)), tuple(sorted(returns)),
                          tuple(sorted(insns.items())))
        emitter = self.emitter
        code = self.shapes.compile(emitter.source(found), f"<region {entry:#010x}>")
        if self.cache is not None:
            self.cache.put(entry_key(emitter.config, entry, self._head(entry)),
                           self._record(found, code))
        return self._install(entry, code, insns)

    def _install(self, entry: int, code: types.CodeType,
                 insns: dict[int, Insn | None]) -> Region:
        """Make the region at entry from its compiled code, and record what it depends on."""
        namespace = self.namespace
        exec(code, namespace)
        region: Region = namespace.pop("region")  # type: ignore[assignment]
        if self.runs.get(entry, 0) < self.review:
            region = self._reviewed(entry, region)
        self.regions[entry] = region
        self._depend(entry, insns)
        if log.in_asm:
            log.translated(self.hart, entry, [i.pc for i in insns.values() if i is not None])
        return region

    def _head(self, entry: int) -> bytes:
        """The first HEAD bytes of RAM at entry (fewer at its end), for entry_key."""
        ram = self.ram
        return self.hart.bus.read_bytes(entry, min(HEAD, ram.base + ram.size - entry))

    def _record(self, found: Discovery, code: types.CodeType) -> Record:
        """What the cache keeps of the region at found.entry for `_recall`."""
        read = self.hart.bus.read_bytes
        listed = tuple((pc, i.word, i.length) if i else (pc, 0, 0) for pc, i in found.insns)
        return (listed, tuple((a, read(a, b - a)) for a, b in _runs(listed)), code)

    def _recall(self, entry: int) -> Region | None:
        """The region last made at entry, from the cache's record, if the code bytes it
        was built from are in RAM now and no stop lies in it: a run of an image that ran
        before gets its regions at their first visit, without the interpreter's warm-up
        runs, a discovery or an emission.  Asked once per entry (a flush does not ask
        again)."""
        assert self.cache is not None
        self.recalled.add(entry)
        if not self.ram.contains(entry, 2):
            return None
        record = self.cache.get(entry_key(self.emitter.config, entry, self._head(entry)))
        if not isinstance(record, tuple) or len(record) != 3 \
                or not isinstance(record[2], types.CodeType):
            return None
        listed, runs, code = record
        ram, read = self.ram, self.hart.bus.read_bytes
        breakpoints, triggers = self.hart.breakpoints, self.hart.triggers.execute
        try:
            insns = {pc: Insn(pc, word, length) if length else None
                     for pc, word, length in listed}
            # The bytes compared are exactly those of the instructions the region will
            # depend on (for invalidation), and they are in RAM now.
            if insns.get(entry) is None or [(a, a + len(b)) for a, b in runs] != _runs(listed) \
                    or any(not ram.contains(a, len(b)) or read(a, len(b)) != b for a, b in runs) \
                    or any(pc in breakpoints or pc in triggers for pc in insns):
                return None
        except (TypeError, ValueError):  # not a record this translator wrote
            return None
        return self._install(entry, code, insns)

    def _depend(self, entry: int, insns: dict[int, Insn | None]) -> None:
        """Record what the new region at entry depends on; flag its code's granules."""
        ram, flags = self.ram, self.ram.flags
        pcs, exit_pcs = [], []
        for pc, insn in insns.items():
            if insn is None:
                exit_pcs.append(pc)
                self.exits.setdefault(pc, set()).add(entry)
                continue
            pcs.append(pc)
            self.code.setdefault(pc, (insn.length, set()))[1].add(entry)
            flags[(pc - ram.base) >> FLAG_SHIFT] |= FLAG_CODE
            flags[(pc + insn.length - 1 - ram.base) >> FLAG_SHIFT] |= FLAG_CODE
        self.members[entry] = (pcs, exit_pcs)

    def _discover(self, entry: int, ran_only: bool = False) -> Discovered:
        """Block leaders reachable from entry, the return addresses among them, and every
        instruction walked (None: needs the interpreter).  `ran_only`: only blocks the
        interpreter has run (the others leave the region, and get their own when hot)."""
        leaders, returns = {entry}, set()
        insns: dict[int, Insn | None] = {}
        # The interpreter stops or traps before these: a region leaves before them.
        breakpoints, triggers = self.hart.breakpoints, self.hart.triggers.execute
        work = [entry]
        total = 0
        decoded = self.hart.decoded
        # Code already copied into COPIES regions is left to the region at its pc, if one
        # has passed its review (one under review may yet be demoted): a loop head behind
        # hundreds of switch cases is compiled a few times, not into every case's region,
        # while code shared by a few regions stays in each (no extra region calls).
        runs, review, code, regions = self.runs, self.review, self.code, self.regions

        def shared(pc: int) -> bool:
            return pc != entry and pc in regions and runs.get(pc, 0) >= review \
                and len(code[pc][1]) >= COPIES

        def lead(pc: int) -> None:
            if pc not in leaders and len(leaders) < MAX_BLOCKS and total < MAX_REGION_INSNS \
                    and not shared(pc) \
                    and (not ran_only or pc in insns or decoded(pc)):
                leaders.add(pc)
                work.append(pc)

        while work:
            pc = work.pop(0)
            for _ in range(MAX_BLOCK_INSNS):
                if pc in insns:
                    lead(pc)  # two walks meet: one block, not two copies
                    break
                if shared(pc):  # falls into another region: leave to it
                    break
                insn = self._fetch(pc)
                if (insn is None or pc in breakpoints or pc in triggers
                        or not translatable(insn.word)):
                    insns[pc] = None
                    break
                insns[pc] = insn
                total += 1
                op = insn.word & 0x7F
                if op == d.OP_BRANCH:
                    lead((pc + d.imm_b(insn.word)) & M)
                    lead(insn.npc)
                    break
                if op == d.OP_JAL:
                    lead((pc + d.imm_j(insn.word)) & M)
                if op in (d.OP_JAL, d.OP_JALR) and d.rd(insn.word):  # a call: it may return here
                    lead(insn.npc)
                    if insn.npc in leaders:
                        returns.add(insn.npc)
                if op in (d.OP_JAL, d.OP_JALR):
                    break
                pc = insn.npc
            else:
                lead(pc)
        return leaders, returns, insns


class Emitter:
    """Python source for regions: a pure function of the Config and a Discovery."""

    def __init__(self, config: Config) -> None:
        self.config = config
        base, size = config.base, config.size
        # Address checks on o, the offset into RAM, by access size.  With a power-of-two
        # size, one mask tests range and alignment; o = rs1 - (base - imm) needs no
        # wrapping to 32 bits as every wrong o, negative too, has a bit in the mask.
        # The mask is negative (-size | n - 1): it then fits one CPython int digit,
        # which makes `o & mask` about twice as fast as with the 32-bit mask.
        self.masked = size & (size - 1) == 0
        self.unwrapped = self.masked and base + size <= (1 << 32) - 2048
        self.bad_address = {
            n: (f"o & {-size | (n - 1)}" if self.masked
                else f"o >= {size}" + (f" or o & {n - 1}" if n > 1 else ""))
            for n in (1, 2, 4)
        }
        # Of the region being emitted: where a jalr may continue, blocks entered from
        # one block only (they start with what it ended knowing), and what each knew.
        self._returns_to: dict[int, int] = {}
        self._sole: dict[int, int] = {}
        self._facts_out: dict[int, Facts] = {}
        self._blocks: list[list[Insn]] = []
        self._index: dict[int, int] = {}
        self._rest: tuple[list[Insn], int] = ([], 0)  # the block being emitted, from
        # the instruction after the one being emitted
        self._latches: dict[int, tuple[int, bool] | None] = {}
        self._counted_loop: list[str] | None = None  # _counted's lines, for _end
        self._reserve: dict[int, int] = {}
        self._leave = "b = -1; break"  # how the block being emitted leaves the region
        self._incoming: dict[int, int] = {}
        self._copied: dict[int, int] = {}
        self._jumps: list[int | None] = []

    def source(self, found: Discovery) -> str:
        """The source of a module defining `region(x, r) -> (next_pc, r)`."""
        entry, leaders, insns = found.entry, set(found.leaders), dict(found.insns)
        by_pc = {pc: self._block_insns(pc, leaders, insns) for pc in found.leaders}
        branches = {pc for pc, block in by_pc.items()
                    if block and block[-1].word & 0x7F == d.OP_BRANCH}
        order = _layout(entry, {pc: self._successors(block) for pc, block in by_pc.items()},
                        branches)
        index = {pc: i for i, pc in enumerate(order)}
        blocks = [by_pc[pc] for pc in order]
        edges = [[index[t] for t in self._successors(block) if t in index] for block in blocks]
        # Where a jalr may continue in the region.
        returns_to = {pc: index[pc] for pc in found.returns if pc in index}
        reserve = _reserves(blocks, edges, set(returns_to.values()))
        self._returns_to = returns_to
        self._sole = _sole_predecessors(blocks, edges, set(returns_to.values()))
        self._facts_out = {}
        self._blocks, self._reserve, self._index = blocks, reserve, index
        self._latches = {}
        # Jumps into each block, and those that ran a copy of it instead (_end): a block
        # whose every way in is a copy is left out.  The entry and return sites are
        # entered from outside.
        self._incoming = {j: 1 for j in returns_to.values()} | {0: 1}
        for targets in edges:
            for j in targets:
                self._incoming[j] = self._incoming.get(j, 0) + 1
        # A latch that only its block enters jumps back inside that block's bare while
        # (_end): not a Python loop around the two, which would go round at most once.
        latched = {latch[0]: i for i in range(len(blocks))
                   if (latch := self._latch(i)) and self._incoming[latch[0]] == 1}
        loops = _nested_loops([[t for t in targets if latched.get(k) != t]
                               for k, targets in enumerate(edges)] if latched else edges)
        self._copied = {}
        self._jumps = []  # every b a jump sets (None: any, by T): _after_loop reads them
        body = self._emit(0, len(blocks) - 1, blocks, index, insns, loops, reserve, 2)
        start = ["    b = 0"]
        if len(blocks) == 1 and not returns_to and not _self_loop(blocks[0]):
            body, start = [line[4:] for line in body[1:]], []  # one pass: no `if b <= 0`
        used, dirty = _registers([insn for block in blocks for insn in block])
        if len(used) >= UNPACK_ALL:
            load = ["    _, " + ", ".join(f"x{n}" for n in range(1, 32)) + " = x"]
        else:
            load = [f"    x{n} = x[{n}]" for n in used]
        # Only what the body uses: each default costs compile() and every call.
        text = "\n".join(body)
        bound = [f"{name}={name}" for name in NAMESPACE if f"{name}[" in text]
        bound += [f"T={returns_to!r}"] if "T.get(" in text else []
        return "\n".join([
            f"def region({', '.join(['x', 'r', *bound])}):",
            *load,
            *start,
            "    while True:",
            text,
            *(f"    x[{n}] = x{n}" for n in dirty),
            "    return npc, r",
        ])

    def _block_insns(self, pc: int, leaders: set[int],
                     insns: dict[int, Insn | None]) -> list[Insn]:
        """The instructions of the block at leader pc (empty: the first needs the interpreter)."""
        block: list[Insn] = []
        while (insn := insns.get(pc)) is not None and (not block or pc not in leaders):
            block.append(insn)
            if insn.word & 0x7F in (d.OP_BRANCH, d.OP_JAL, d.OP_JALR):
                break
            pc = insn.npc
        return block

    @staticmethod
    def _successors(block: list[Insn]) -> list[int]:
        if not block:
            return []
        last = block[-1]
        op, w = last.word & 0x7F, last.word
        if op == d.OP_BRANCH:
            return [(last.pc + d.imm_b(w)) & M, last.npc]
        # A call's return address counts as its successor: the callee's return goes there.
        returns = [last.npc] if d.rd(w) else []
        if op == d.OP_JAL:
            return [(last.pc + d.imm_j(w)) & M, *returns]
        return returns if op == d.OP_JALR else [last.npc]

    def _emit(self, lo: int, hi: int, blocks: list[list[Insn]], index: dict[int, int],
              insns: dict[int, Insn | None], loops: dict[int, int], reserve: dict[int, int],
              indent: int) -> list[str]:
        """Source of blocks lo..hi, the body of one Python loop; inner loops nest.

        Block i is entered when b <= i and falls into block i+1 when done.  A jump
        inside the loop sets b (and `continue`s when it goes back); a jump out of it
        sets b and breaks; the code after an inner loop passes such jumps on.  An
        exit from the region sets npc and b = -1.
        """
        pad = "    " * indent
        lines: list[str] = []
        i = lo
        while i <= hi:
            end = loops.get(i, i) if i != lo else i
            if end > i:
                mark = len(self._jumps)
                inner = self._emit(i, end, blocks, index, insns, loops, reserve, indent + 2)
                self._jumps.append(end + 1)  # falling off its end
                lines += [f"{pad}if b <= {end}:", f"{pad}    while True:", *inner,
                          f"{pad}        if b <= {end}:", f"{pad}            b = {end + 1}",
                          f"{pad}        break",
                          *(pad + line for line in self._after_loop(i, end, lo, hi, mark))]
                i = end + 1
                continue
            if i in self._copied and self._copied[i] == self._incoming.get(i):
                i += 1  # only copies of it run
                continue
            # An exit sets b = -1 for the loops around it to pass on; from the outermost
            # loop (not inside a one-block loop's own while), nothing looks at b.
            top = indent == 2 and not self._bare_loop(i)
            self._leave = "break" if top else "b = -1; break"
            lines += [pad + line
                      for line in self._block(i, blocks[i], index, insns, lo, hi, reserve.get(i))]
            i += 1
        return lines

    def _after_loop(self, i: int, end: int, lo: int, hi: int, mark: int) -> list[str]:
        """What follows the inner loop over blocks i..end inside the loop over lo..hi:
        pass on what left it (b out of lo..hi, -1 an exit) and go round again for a
        jump back (b < i).  Tests only for the values of b that its jumps can set
        (self._jumps since `mark`): a loop left only forward within lo..hi, quicksort's
        scans, tests just for an exit."""
        out = {j for j in self._jumps[mark:] if j is None or not i <= j <= end}
        anywhere = None in out  # a return's jump to whichever block T gives
        known = [j for j in out if j is not None]
        far = anywhere or any(not lo <= j <= hi for j in known)
        back = anywhere or any(lo <= j < i for j in known)
        return [f"    if b < {lo} or b > {hi}:" if far else "    if b < 0:", "        break",
                *([f"    if b < {i}:", "        continue"] if back else [])]

    def _block(self, i: int, block: list[Insn], index: dict[int, int],
               insns: dict[int, Insn | None], lo: int, hi: int, reserve: int | None) -> list[str]:
        """Source of block i, inside the Python loop over blocks lo..hi.

        Only the entry and the targets of backward jumps check the budget, for the
        longest run of blocks up to the next check (`reserve`); the others just charge it.
        """
        if not block:  # its first instruction needs the interpreter
            pc = next(pc for pc, j in index.items() if j == i)
            return [f"if b <= {i}:", f"    npc = {pc | 1}; {self._leave}"]
        lines = [f"if b <= {i}:"]
        if reserve is not None:
            lines += [f"    if r < {reserve}:", f"        npc = {block[0].pc | 1}; {self._leave}"]
        # What is known of the registers in this block (Facts).
        before = self._facts_out.get(self._sole.get(i, -1))
        facts = before.copy() if before is not None else Facts()
        self._counted_loop = None
        if _self_loop(block) and reserve is not None:
            self._counted_loop = self._counted(block, facts.copy(), reserve)
        latch = self._latch(i)  # its charge is made here, once a round (_end)
        lines += self._straight(block, facts, len(self._blocks[latch[0]]) if latch else 0)
        if self._counted_loop is not None:
            facts.o = None  # o after its counted loop is not o after this code
        self._facts_out[i] = facts
        return self._end(i, block, facts, lines, index, insns, lo, hi, True)

    def _straight(self, block: list[Insn], facts: Facts, ahead: int = 0) -> list[str]:
        """The block's charge and instructions (indented once), updating `facts`.  A
        constant is folded into what reads it, and dropped when written again before
        anything may leave.  `ahead`: instructions after the block charged with it."""
        n = len(block) + ahead
        lines = [f"    r -= {n}"]
        known = facts.known
        droppable: dict[int, int] = {}  # register -> index of its constant's line
        for k, insn in enumerate(block):
            w = insn.word
            value = _fold(insn, known)
            rd = w >> 7 & 31
            if value is not None:
                if rd in droppable:
                    lines[droppable[rd]] = ""
                facts.wrote(rd, value=value)
                droppable[rd] = len(lines)
                lines.append(f"    x{rd} = {value}")
                continue
            self._rest = (block, k + 1)
            body = self._lines(insn, facts)  # discovery left only translatable ones
            op = w & 0x7F
            if op in ACCESSES and BAIL in "".join(body):  # only _check's tests leave
                droppable.clear()
                bail = f"npc = {insn.pc | 1}; r += {n - k}; {self._leave}"
                body = [line.replace(BAIL, bail) for line in body]
            lines += ["    " + line for line in body]
            if op in WRITES_RD and rd in droppable and body:
                lines[droppable.pop(rd)] = ""  # overwritten before anything could leave
        self._rest = ([], 0)
        return [line for line in lines if line]

    def _copyable(self, j: int) -> bool:
        """Block j is short enough to copy where a forward jump goes to it: it checks no
        budget (a forward jump's charge covers it) and does not end in jalr."""
        block = self._blocks[j]
        return 0 < len(block) <= COPY_INSNS and j not in self._reserve \
            and block[-1].word & 0x7F != d.OP_JALR

    def _latch(self, i: int) -> tuple[int, bool] | None:
        """For block i ending in a branch: a short block it branches or falls to that only
        leads back to block i (quicksort's `addi a7, a7, 4; j scan`), and whether it is on
        the taken side.  The loop then runs as a bare while with a copy of the latch: no
        `b = i`, no `if b <= i` a round."""
        if i in self._latches:
            return self._latches[i]
        self._latches[i] = None
        block = self._blocks[i]
        # A branch back to itself is a bare loop already; one whose two ways go to one
        # block has no way out to test.
        if not block or block[-1].word & 0x7F != d.OP_BRANCH or _self_loop(block):
            return None
        last = block[-1]
        taken = (last.pc + d.imm_b(last.word)) & M
        if taken == last.npc:
            return None
        for target, on_taken in ((taken, True), (last.npc, False)):
            j = self._index.get(target)
            if j is not None and j > i and self._copyable(j) \
                    and self._successors(self._blocks[j]) == [block[0].pc]:
                self._latches[i] = (j, on_taken)
                break
        return self._latches[i]

    def _bare_loop(self, i: int) -> bool:
        """Block i runs as a bare while of its own (_end): it branches back to itself,
        directly or through its latch."""
        return _self_loop(self._blocks[i]) or self._latch(i) is not None

    def _end(self, i: int, block: list[Insn], facts: Facts, lines: list[str],
             index: dict[int, int], insns: dict[int, Insn | None], lo: int, hi: int,
             copies: bool) -> list[str]:
        """`lines` (block i's code, or a copy's in block i) with the block's ending added.
        `copies`: a forward jump to a short block later in the loop runs a copy of it
        there, knowing what this block knew, instead of stepping through the blocks
        between (each an `if b <= k` test) to reach it."""
        known = facts.known
        last = block[-1]
        op, w = last.word & 0x7F, last.word

        def goto(target: int) -> list[str]:
            j = index.get(target)
            if j is None:
                return [f"npc = {target}; {self._leave}"]
            self._jumps.append(j)
            if not lo <= j <= hi:
                return [f"b = {j}", "break"]
            if j == i + 1:
                return []
            if copies and j > i + 1 and self._copyable(j):
                self._copied[j] = self._copied.get(j, 0) + 1
                copy = facts.copy()
                code = self._straight(self._blocks[j], copy)
                code = self._end(i, self._blocks[j], copy, code, index, insns, lo, hi, False)
                return [line[4:] for line in code]
            return [f"b = {j}"] + (["continue"] if j <= i else [])

        if op == d.OP_BRANCH:
            a, b, f3 = _reg(d.rs1(w), known), _reg(d.rs2(w), known), d.funct3(w)
            if f3 in (4, 5) and facts.span(d.rs1(w))[1] < S and facts.span(d.rs2(w))[1] < S:
                f3 += 2  # both non-negative: the signed order is the unsigned one
            if b == "0":
                cond = BRANCH_ZERO[f3].format(a=a)
            elif f3 in (4, 5):
                cond = _signed(f3 == 5, a, b)
            else:
                cond = BRANCH_EXPR[f3].format(a=a, b=b)
            latch = self._latch(i) if copies else None
            if _self_loop(block) or latch is not None:  # a bare while
                leave, out, latch_code, refund = f"not ({cond})", last.npc, [], []
                if latch is not None:  # with a copy of its latch, then round again
                    j, on_taken = latch
                    if not on_taken:
                        leave, out = cond, (last.pc + d.imm_b(w)) & M
                    self._copied[j] = self._copied.get(j, 0) + 1
                    # Charged with block i (_block): leaving, it gives the latch's back.
                    latch_code = self._straight(self._blocks[j], facts.copy())[1:]
                    refund = [f"            r += {len(self._blocks[j])}"]
                loop = ["    while True:", *("    " + line for line in lines[1:]),
                        f"        if {leave}:", *refund, "            break",
                        *("    " + line for line in latch_code)]
                if self._counted_loop is not None and latch is None:
                    loop = [*self._counted_loop, "    else:", *("    " + line for line in loop)]
                return [lines[0], *loop,
                        "    if b < 0:", "        break", *("    " + s for s in goto(out))]
            taken, fall = goto((last.pc + d.imm_b(w)) & M), goto(last.npc)
            if not taken:  # one arm only: fewer lines to compile
                taken, fall, cond = fall, taken, f"not ({cond})"
            lines += [f"    if {cond}:", *("        " + s for s in taken)]
            if fall:
                lines += ["    else:", *("        " + s for s in fall)]
        elif op == d.OP_JAL:
            lines += ["    " + s for s in goto((last.pc + d.imm_j(w)) & M)]
        elif op == d.OP_JALR and not self._returns_to:
            lines += [f"    npc = t; {self._leave}"]
        elif op == d.OP_JALR:  # a return to a call in the region continues there
            self._jumps.append(None)  # any block T names
            lines += ["    b = T.get(t, -1)", "    if b < 0:", "        npc = t; break",
                      f"    if {lo} <= b <= {hi}:", "        continue", "    break"]
        elif insns.get(last.npc, 0) is None:  # the next instruction needs the interpreter
            lines += [f"    npc = {last.npc | 1}; {self._leave}"]
        else:
            lines += ["    " + s for s in goto(last.npc)]
        return lines

    def _counted(self, block: list[Insn], facts: Facts,
                 reserve: int) -> list[str] | None:
        """A one-block loop that counts a register to a bound (`bne p, q` with one
        `addi p, p, c` and q unchanged), run `n` times at once when a guard on entry
        shows its budget and its accesses at registers that step by a constant (or
        not at all) good for all n rounds: the guard's lines, and the fast loop's
        (a `for` with those accesses untested, charged once if nothing can leave).
        None when the loop is not such a loop or nothing would be untested.
        `facts`: what is known at the block's start (changed here)."""
        if not self.unwrapped or self.config.watch_loads:
            return None
        last, known = block[-1], facts.known
        if d.funct3(last.word) != 1:  # bne
            return None
        steps, written = _steps(block)
        p, q = d.rs1(last.word), d.rs2(last.word)
        if p not in steps:
            p, q = q, p
        if p not in steps or q in written:
            return None
        base, ram, length = self.config.base, self.config.size, len(block)
        tests: list[str] = []
        stores: list[str] = []
        guarded = set()
        for k, insn in enumerate(block):
            w = insn.word
            op = w & 0x7F
            if op not in (d.OP_LOAD, d.OP_STORE) or (d.rs1(w) in written
                                                      and d.rs1(w) not in steps):
                continue
            rs1, (store, imm, size) = d.rs1(w), _access(w)
            step, at = steps.get(rs1, (0, length))
            if step % size:
                continue
            ahead = step if at < k else 0  # its register already stepped this round
            first = _plus(_reg(rs1, known), ahead + imm - base)
            last_o = f"{first} + {step} * (n - 1)" if step else first
            mask = -ram | (size - 1)  # its first round's offset and its last's
            tests += [f"{first} & {mask}"] + ([f"({last_o}) & {mask}"] if step else [])
            if store:
                lo, hi = (first, last_o) if step >= 0 else (last_o, first)
                stores.append(f"any(flags[({lo}) >> {FLAG_SHIFT}:"
                              f"({hi} + {size - 1} >> {FLAG_SHIFT}) + 1])")
            guarded.add(insn.pc)
            if rs1 and rs1 not in known:  # where it lies at the start of every round
                low, high = base - ahead - imm, base + ram - size - ahead - imm
                was = facts.ranges.get(rs1, FULL)
                facts.ranges[rs1] = (max(was[0], low, 0), min(was[1], high, M))
        if not guarded:
            return None
        facts.guarded = frozenset(guarded)
        step = steps[p][0]
        a, b = _reg(p, known), _reg(q, known)
        distance = f"({b} - {a}) & {M}" if step > 0 else f"({a} - {b}) & {M}"
        start = facts.copy()
        body = self._straight(block, facts)
        leaves = any("b = -1; break" in line for line in body)
        setup: list[str] = []
        after: list[str] = []
        if not leaves:  # nothing leaves mid-loop: registers only used as bases go by index
            start.indexed = _indexable(block, guarded, steps, known)
            if start.indexed:
                body = self._straight(block, start)
            for rs1, shift in start.indexed.items():
                setup.append(f"        i{rs1} = (x{rs1} - {base}) >> {shift}")
                if rs1 in steps:
                    after.append(f"        x{rs1} = (x{rs1} + {steps[rs1][0]} * n) & {M}")
        charge = [] if leaves else [f"        r -= n * {length}"]
        ok = " or ".join(tests + stores)
        return [f"    n, e = divmod({distance}, {abs(step)})",
                f"    if n and not e and r - n * {length} >= {reserve - length} "
                f"and not ({ok}):", *charge, *setup, "        for _ in range(n):",
                *("        " + line for line in (body if leaves else body[1:])), *after]

    def _offset(self, a: str, imm: int) -> str:
        base = self.config.base
        if self.unwrapped:
            return f"o = {a} - {base - imm}"
        return f"o = ({a} + {(imm - base) & M}) & {M}"

    def _body(self, insn: Insn, facts: Facts | None = None) -> list[str] | None:
        """Python lines for one instruction (BAIL where it must leave before it), or None
        when it needs the interpreter.  `facts`: what is known of the registers, which
        the instruction's effects update."""
        if not translatable(insn.word):
            return None
        return self._lines(insn, facts or Facts())

    def _lines(self, insn: Insn, facts: Facts) -> list[str]:
        """_body's lines for a translatable instruction."""
        w = insn.word
        op, rd = w & 0x7F, w >> 7 & 31
        if op == d.OP_LOAD:
            lines, span = self._load(insn, facts)
        elif op == d.OP_STORE:
            return self._store(insn, facts)
        elif op == d.OP_JALR:
            a, imm = _reg(d.rs1(w), facts.known), d.imm_i(w)
            lines = [f"t = ({a} + {imm}) & {M - 1}" if imm else f"t = {a} & {M - 1}"]
            lines += [f"x{rd} = {insn.npc}"] if rd else []
            span = (insn.npc, insn.npc)
        elif not rd:
            return []
        elif op == d.OP_IMM:
            lines, span = self._alu_imm(insn, facts)
        elif op == d.OP_OP:
            lines, span = self._alu(insn, facts)
        elif op == d.OP_LUI:
            lines, span = [f"x{rd} = {d.imm_u(w)}"], FULL
        elif op == d.OP_AUIPC:
            lines, span = [f"x{rd} = {(insn.pc + d.imm_u(w)) & M}"], FULL
        elif op == d.OP_JAL:
            lines, span = [f"x{rd} = {insn.npc}"], (insn.npc, insn.npc)
        else:
            return []  # a branch (its block's end emits it), or FENCE: one hart, in order
        facts.wrote(rd, span)
        return lines

    def _alu_imm(self, insn: Insn, facts: Facts) -> tuple[list[str], Span]:
        w, rs1 = insn.word, d.rs1(insn.word)
        f3, imm, dst, a = d.funct3(w), d.imm_i(w), f"x{d.rd(w)}", _reg(rs1, facts.known)
        lo, hi = facts.span(rs1)
        shamt, uimm = imm & 31, imm & M
        if f3 == 0 and d.rd(w) == rs1 and rs1 in facts.indexed:  # steps its index instead
            return [f"i{rs1} += {imm >> facts.indexed[rs1]}"], FULL
        if f3 == 0 and imm and a != "0":
            return _sum(dst, a, "+" if imm > 0 else "-", abs(imm), (lo + imm, hi + imm))
        if f3 == 0:
            return [f"{dst} = {a if imm == 0 else uimm}"], (lo, hi) if imm == 0 else (uimm, uimm)
        if f3 == 1:
            if hi << shamt <= M:
                return [f"{dst} = {a} << {shamt}" if shamt else f"{dst} = {a}"], \
                    (lo << shamt, hi << shamt)
            # Masked before the shift, the mask fits one CPython int digit.
            return [f"{dst} = ({a} & {M >> shamt}) << {shamt}" if shamt > 1
                    else f"{dst} = ({a} << {shamt}) & {M}"], FULL
        if f3 == 2:
            if hi < S and uimm < S:  # both non-negative: the unsigned order
                return [f"{dst} = 1 if {a} < {uimm} else 0"], (0, 1)
            return [f"{dst} = 1 if ({_signed(False, a, str(uimm))}) else 0"], (0, 1)
        if f3 == 3:
            return [f"{dst} = 1 if {a} < {uimm} else 0"], (0, 1)
        if f3 == 5:
            if w >> 30 & 1 and hi >= S:
                return [f"{dst} = (({a} ^ {S}) - {S} >> {shamt}) & {M}"], FULL
            return [f"{dst} = {a} >> {shamt}"], (lo >> shamt, hi >> shamt)
        op = {4: "^", 6: "|", 7: "&"}[f3]
        span = (0, min(hi, uimm)) if f3 == 7 else (0, _cover(max(hi, uimm)))
        return [f"{dst} = {a} {op} {uimm}"], span

    def _alu(self, insn: Insn, facts: Facts) -> tuple[list[str], Span]:
        w = insn.word
        f7, f3, rs1, rs2 = d.funct7(w), d.funct3(w), d.rs1(w), d.rs2(w)
        a, b, dst = _reg(rs1, facts.known), _reg(rs2, facts.known), f"x{d.rd(w)}"
        (alo, ahi), (blo, bhi) = facts.span(rs1), facts.span(rs2)
        if (f7, f3) in ((0, 0), (0, 4), (0, 6)) and "0" in (a, b):  # mv and friends
            return [f"{dst} = {b if a == '0' else a}"], (blo, bhi) if a == "0" else (alo, ahi)
        if (f7, f3) == (0, 0):
            return _sum(dst, a, "+", b, (alo + blo, ahi + bhi))
        if (f7, f3) == (0x20, 0):
            return _sum(dst, a, "-", b, (alo - bhi, ahi - blo))
        small = ahi < S and bhi < S  # both non-negative as signed numbers
        if (f7, f3) in ((0, 4), (0, 6)):
            return [f"{dst} = {a} {'^' if f3 == 4 else '|'} {b}"], (0, _cover(max(ahi, bhi)))
        if (f7, f3) == (0, 7):
            return [f"{dst} = {a} & {b}"], (0, min(ahi, bhi))
        if (f7, f3) in ((0, 2), (0, 3)):
            cond = f"{a} < {b}" if f3 == 3 or small else _signed(False, a, b)
            return [f"{dst} = 1 if ({cond}) else 0"], (0, 1)
        if f3 == 5 and f7 in (0, 0x20) and (f7 == 0 or ahi < S):  # srl, or sra of a positive
            return [f"{dst} = {a} >> ({b} & 31)"], (0, ahi)
        if (f7, f3) == (1, 0) and ahi * bhi <= M:
            return [f"{dst} = {a} * {b}"], (alo * blo, ahi * bhi)
        if (f7, f3) in ((1, 4), (1, 5)) and blo > 0 and (f3 == 5 or small):
            return [f"{dst} = {a} // {b}"], (alo // bhi, ahi // blo)  # no zero, no sign
        if (f7, f3) in ((1, 6), (1, 7)) and blo > 0 and (f3 == 7 or small):
            return [f"{dst} = {a} % {b}"], (0, min(ahi, bhi - 1))
        span = (0, ahi) if (f7, f3) == (1, 7) else FULL  # remu: a itself, or less
        return [f"{dst} = {OP_EXPR[(f7, f3)].format(a=a, b=b)}"], span

    def _check(self, insn: Insn, facts: Facts, size: int, store: bool) -> list[str]:
        """The address test of an access (o, the offset into RAM, then a BAIL when it
        is not plain RAM), less what an earlier access at the same rs1 + imm tested."""
        w, rs1 = insn.word, d.rs1(insn.word)
        imm = d.imm_s(w) if store else d.imm_i(w)
        where = (rs1, imm)
        lines = [] if facts.o == where else [self._offset(_reg(rs1, facts.known), imm)]
        facts.o = where
        before = facts.checked.get(where)
        if insn.pc in facts.guarded:  # a counted loop's guard tested it, flags too
            facts.checked[where] = (size, True)
            if rs1 in facts.indexed:  # at i<rs1>, an index into the view
                facts.o = None
                return []
            return lines
        if before is not None and before[0] >= size:  # aligned and inside RAM already
            if store and not before[1]:
                lines += [f"if flags[o >> {FLAG_SHIFT}]:", f"    {BAIL}"]
            facts.checked[where] = (before[0], True) if store else before
            return lines
        bad = self.bad_address[size]
        # The test may cover the block's later accesses at rs1 + other offsets too (a
        # function's saves and restores): one test, which leaves before the first.
        more, covered = self._more_tests(rs1, imm, size, store)
        bad += more
        for k, entry in covered.items():
            facts.checked[(rs1, imm + k)] = entry
        facts.checked[where] = (size, store or (before is not None and before[1]))
        # Passed: rs1 lies in the RAM the offset reaches (an exact range if it cannot wrap).
        lo = self.config.base - imm
        if rs1 and rs1 not in facts.known and lo >= 0 and lo + self.config.size - 1 <= M:
            low, high = facts.span(rs1)
            facts.ranges[rs1] = (max(low, lo), min(high, lo + self.config.size - 1))
        return lines + [f"if {bad}:", f"    {BAIL}"]

    def _more_tests(self, rs1: int, imm: int, size: int,
                    store: bool) -> tuple[str, dict[int, tuple[int, bool]]]:
        """What the address test of an access at rs1 + imm adds for flags, and to cover
        the later accesses of _group too; with what it then tells of those (offset ->
        facts.checked's entry).  A group is tested only when that costs fewer bytecodes
        than their own tests, counted: 4 for an address test, 6 more for a store's
        flags, 4 for each end of the range and 7 for each flag test the group adds."""
        # Any flag leaves (code, watcher, watchpoint, trigger): the interpreter's store
        # then does what the flag asks (invalidates, tells, stops or traps).
        own = f" or flags[o >> {FLAG_SHIFT}]" if store else ""
        if self.config.watch_loads:  # a load from a watched granule leaves
            return own or f" or flags[o >> {FLAG_SHIFT}] & {FLAG_LOAD}", {}
        group = self._group(rs1, imm, size)
        if not group:
            return own, {}
        low = min([0, *group])
        high = max([size, *(k + n for k, (n, _) in group.items())])
        stores = {k: n for k, (n, st) in group.items() if st} | ({0: size} if store else {})
        window = _flag_window(stores, 0 if store else None)
        flag_at = sorted({min(window), max(k + stores[k] for k in window) - 1}) if window else []
        saved = sum(10 if k in window else 4 for k in group)
        cost = 4 * ((low < 0) + (high > size)) + 7 * (len(flag_at) - store)
        if saved <= cost:
            return own, {}
        if low < 0 and high > size:
            test = f" or not {-low} <= o <= {self.config.size - high}"
        elif low < 0:
            test = f" or o < {-low}"
        else:
            test = f" or o > {self.config.size - high}" if high > size else ""
        test += "".join(f" or flags[{_plus('o', at)} >> {FLAG_SHIFT}]" for at in flag_at)
        return test, {k: (n, k in window) for k, (n, _) in group.items()}

    def _group(self, rs1: int, imm: int, size: int) -> dict[int, tuple[int, bool]]:
        """The block's later accesses at rs1 + another offset, before rs1 changes, whose
        alignment follows from this one's: offset from imm -> (largest size, any store)."""
        found: dict[int, tuple[int, bool]] = {}
        block, start = self._rest
        for insn in itertools.islice(block, start, None):
            w = insn.word
            op = w & 0x7F
            if op in (d.OP_LOAD, d.OP_STORE) and d.rs1(w) == rs1:
                store, k, n = _access(w)
                k -= imm
                if k and n <= size and k % n == 0:
                    had, stored = found.get(k, (0, False))
                    found[k] = (max(had, n), stored or store)
            if op in WRITES_RD and d.rd(w) == rs1:
                break
        return found

    def _load(self, insn: Insn, facts: Facts) -> tuple[list[str], Span]:
        w, rd = insn.word, d.rd(insn.word)
        kind = LOADS[d.funct3(w)]
        view, shift, mask = LOAD_VIEW[kind]
        lines = self._check(insn, facts, kind[0], False)
        index = _index(insn, facts, shift)
        span = (0, (1 << 8 * kind[0]) - 1) if not kind[1] else FULL
        return lines + ([f"x{rd} = {view}[{index}]{mask}"] if rd else []), span

    def _store(self, insn: Insn, facts: Facts) -> list[str]:
        size = STORES[d.funct3(insn.word)]
        view, shift, mask = STORE_VIEW[size]
        lines = self._check(insn, facts, size, True)
        b = _reg(d.rs2(insn.word), facts.known)
        return lines + [f"{view}[{_index(insn, facts, shift)}] = {b}{mask}"]


Span = tuple[int, int]  # the lowest and highest value a register may hold
FULL: Span = (0, M)


def _runs(listed: Iterable[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """[start, end) of each run of contiguous code that a record's translated
    instructions ((pc, word, length) by pc, length 0: an exit) cover."""
    runs: list[tuple[int, int]] = []
    for pc, _, length in listed:
        if length:
            if runs and runs[-1][1] == pc:
                runs[-1] = (runs[-1][0], pc + length)
            else:
                runs.append((pc, pc + length))
    return runs


def _sum(dst: str, a: str, op: str, b: str | int, span: Span) -> tuple[list[str], Span]:
    """dst = a + b or a - b (`op`), where `span` is the range of the exact result:
    wrapped to 32 bits only if it may leave 0..M.  The wrap is a test, faster than
    `& M`, whose 32-bit operand takes CPython's slow int path."""
    line = f"{dst} = {a} {op} {b}"
    if span[0] >= 0 and span[1] <= M:
        return [line], span
    if op == "+":
        return [line, f"if {dst} > {M}:", f"    {dst} -= {M + 1}"], FULL
    return [line, f"if {dst} < 0:", f"    {dst} += {M + 1}"], FULL


def _indexable(block: list[Insn], guarded: set[int], steps: dict[int, tuple[int, int]],
               known: dict[int, int]) -> dict[int, int]:
    """Registers of a counted loop that serve only as bases of its guarded accesses, all
    of one size and at multiples of it (and step by one): register -> log2 of the
    size.  Its loop keeps an index into the view for each, in place of the address."""
    sizes: dict[int, set[int]] = {}
    other: set[int] = set()  # read otherwise
    for k, insn in enumerate(block[:-1]):  # the branch does not run in the counted loop
        w = insn.word
        op, rs1 = w & 0x7F, d.rs1(w)
        if op in (d.OP_LOAD, d.OP_STORE) and insn.pc in guarded:
            store, imm, size = _access(w)
            sizes.setdefault(rs1, set()).add(size if imm % size == 0 else -1)
            if store:
                other.add(d.rs2(w))
            continue
        if steps.get(rs1, (0, -1))[1] == k:
            continue  # its own step
        if op in READS_RS1:
            other.add(rs1)
        if op in READS_RS2:
            other.add(d.rs2(w))
    one = {rs1: min(size) for rs1, size in sizes.items() if len(size) == 1}
    return {rs1: size.bit_length() - 1 for rs1, size in one.items()
            if rs1 and rs1 not in known and rs1 not in other and size > 0
            and steps.get(rs1, (0, 0))[0] % size == 0}


def _steps(block: list[Insn]) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """Of the registers a block writes, those it writes once, by `addi r, r, c` (c not
    0): r -> (c, the addi's index); and all it writes."""
    writes: dict[int, list[int]] = {}
    for k, insn in enumerate(block):
        w = insn.word
        if w & 0x7F in WRITES_RD and d.rd(w):
            writes.setdefault(d.rd(w), []).append(k)
    steps = {}
    for rd, at in writes.items():
        w = block[at[0]].word
        if len(at) == 1 and w & 0x7F == d.OP_IMM and d.funct3(w) == 0 and d.rs1(w) == rd \
                and d.imm_i(w):
            steps[rd] = (d.imm_i(w), at[0])
    return steps, set(writes)


def _access(w: int) -> tuple[bool, int, int]:
    """A load's or store's (store, offset, size)."""
    store = w & 0x7F == d.OP_STORE
    if store:
        return True, d.imm_s(w), STORES[d.funct3(w)]
    return False, d.imm_i(w), LOADS[d.funct3(w)][0]


def _index(insn: Insn, facts: Facts, shift: int) -> str:
    """The index into a RAM view of an access whose offset o its test left (or, in a
    counted loop, of one at an indexed register: i<n> plus its offset, in units)."""
    w = insn.word
    rs1 = d.rs1(w)
    if rs1 in facts.indexed and insn.pc in facts.guarded:
        k = _access(w)[1] >> shift
        return f"i{rs1} + {k}" if k > 0 else f"i{rs1} - {-k}" if k else f"i{rs1}"
    return f"o >> {shift}" if shift else "o"


def _plus(a: str, k: int) -> str:
    """a + k as an operand."""
    return a if not k else f"({a} {'+' if k > 0 else '-'} {abs(k)})"


def _flag_window(stores: dict[int, int], must: int | None) -> set[int]:
    """Of stores (offset -> size), those inside the 16 bytes from one of them that hold
    the most (two granules at most: the flags at its first and last byte cover them),
    `must` among them if given."""
    best: set[int] = set()
    for start in stores:
        inside = {k for k, n in stores.items() if start <= k and k + n <= start + GRANULE}
        if (must is None or must in inside) and len(inside) > len(best):
            best = inside
    return best


def _self_loop(block: list[Insn]) -> bool:
    """The block ends in a branch back to its own start."""
    w = block[-1].word if block else 0
    return w & 0x7F == d.OP_BRANCH and (block[-1].pc + d.imm_b(w)) & M == block[0].pc


def _cover(n: int) -> int:
    """The largest value an or or xor of values up to n can give."""
    return (1 << n.bit_length()) - 1


class Facts:
    """What emission knows of the registers inside one block, from its start: nothing,
    as a block may be entered from anywhere, unless one block only leads to it
    (`_sole_predecessors`), whose Facts it then starts from.

    - known: values, folded into what reads them;
    - ranges: where a register's value lies (from loads, masks, shifts, a passed
      address check), so that an add that cannot pass 2**32 needs no wrap test, a
      shift no mask, a signed compare of non-negative values the unsigned one;
    - checked: (rs1, imm) -> (size, store) of accesses that passed the address test
      there (store: the flag test too), so another access there skips it; o: the
      (rs1, imm) that o holds the offset of.  Translated code never changes flags.
    """

    def __init__(self) -> None:
        self.known: dict[int, int] = {}
        self.ranges: dict[int, Span] = {}
        self.checked: dict[tuple[int, int], tuple[int, bool]] = {}
        self.o: tuple[int, int] | None = None
        self.guarded: frozenset[int] = frozenset()  # accesses (pcs) a loop's guard tested
        self.indexed: dict[int, int] = {}  # register -> shift: its accesses use i<n>

    def copy(self) -> Facts:
        facts = Facts()
        facts.known, facts.ranges = dict(self.known), dict(self.ranges)
        facts.checked, facts.o, facts.guarded = dict(self.checked), self.o, self.guarded
        facts.indexed = self.indexed
        return facts

    def span(self, n: int) -> Span:
        if not n:
            return (0, 0)
        value = self.known.get(n)
        return (value, value) if value is not None else self.ranges.get(n, FULL)

    def wrote(self, rd: int, span: Span = FULL, value: int | None = None) -> None:
        """rd now holds `value` (a constant), or some value in `span`."""
        if not rd:
            return
        self.known.pop(rd, None)
        self.ranges.pop(rd, None)
        if value is not None:
            self.known[rd] = value
        elif span != FULL:
            self.ranges[rd] = span
        checked = self.checked
        if checked:
            for where in [where for where in checked if where[0] == rd]:
                del checked[where]
        if self.o is not None and self.o[0] == rd:
            self.o = None


def translatable(w: int) -> bool:
    """Whether `Emitter._body` has Python for the instruction (else the interpreter runs
    it): the test alone, without building lines, for discovery's walk."""
    op, f3 = w & 0x7F, d.funct3(w)
    if op in (d.OP_LUI, d.OP_AUIPC, d.OP_JAL):
        return True
    if op == d.OP_IMM:
        return f3 not in (1, 5) or (f3, d.funct7(w)) in ((1, 0), (5, 0), (5, 0x20))
    if op == d.OP_OP:
        return (d.funct7(w), f3) in OP_EXPR
    if op == d.OP_LOAD:
        return f3 in LOADS
    if op == d.OP_STORE:
        return f3 in STORES
    if op == d.OP_BRANCH:
        return f3 in BRANCH_EXPR
    return op in (d.OP_JALR, d.OP_MISC_MEM) and f3 == 0


def _layout(entry: int, successors: dict[int, list[int]],
            branches: set[int]) -> list[int]:
    """Blocks in reverse postorder from the entry: every jump goes to a later block except
    those closing a loop, and a loop's blocks stay together.  A branch's target is placed
    right after it, its fall-through later, unless the fall-through is on the shorter
    way back to the branch (`branches`: the blocks ending in one): the innermost loop's
    blocks then come first, so that the loop is one Python loop (quicksort's swap,
    between its scans)."""
    def visits(pc: int) -> Iterator[int]:
        succ = successors[pc]
        if pc in branches and len(succ) == 2 and \
                _way_back(succ[1], pc, successors) < _way_back(succ[0], pc, successors):
            return iter(succ)  # the fall-through is visited last: placed right after
        return iter(succ[::-1])

    postorder: list[int] = []
    seen = {entry}
    stack = [(entry, visits(entry))]
    while stack:
        pc, todo = stack[-1]
        for succ in todo:
            if succ in successors and succ not in seen:
                seen.add(succ)
                stack.append((succ, visits(succ)))
                break
        else:
            stack.pop()
            postorder.append(pc)
    return postorder[::-1]


def _way_back(start: int, pc: int, successors: dict[int, list[int]]) -> int:
    """How many jumps from start lead back to pc at the fewest (more than any: never)."""
    seen, frontier = {start}, [start]
    for steps in range(len(successors) + 1):
        if pc in seen:
            return steps
        reached = [t for f in frontier for t in successors.get(f, ()) if t not in seen]
        seen.update(reached)
        frontier = reached
    return len(successors) + 1


def _nested_loops(edges: list[list[int]]) -> dict[int, int]:
    """Loops that become Python loops: head -> last block, for each block h that a later
    block t jumps back to, spanning h..t.  The ranges must nest; inner (shorter) loops
    are chosen first, as they run most."""
    spans: dict[int, int] = {}
    for t, targets in enumerate(edges):
        for h in targets:
            if 0 < h <= t:
                spans[h] = max(spans.get(h, h), t)
    chosen: dict[int, int] = {}
    for h, t in sorted(spans.items(), key=lambda span: span[1] - span[0]):
        inside = [(h2, t2) for h2, t2 in chosen.items() if h <= h2 and t2 <= t]
        around = [(h2, t2) for h2, t2 in chosen.items() if h2 <= h and t <= t2]
        if len(inside) + len(around) == sum(1 for h2, t2 in chosen.items()
                                             if not (t2 < h or t < h2)) \
                and _depth([*inside, (h, t)]) + len(around) <= MAX_LOOP_DEPTH:
            chosen[h] = t
    return chosen


def _depth(spans: list[tuple[int, int]]) -> int:
    """How deep properly nested ranges go."""
    return max(sum(1 for h2, t2 in spans if h2 <= h and t <= t2) for h, t in spans)


def _sole_predecessors(blocks: list[list[Insn]], edges: list[list[int]],
                       entries: set[int]) -> dict[int, int]:
    """Block -> the one earlier block that can lead to it, by a branch, a plain jump or
    falling through, where nothing else can (not the entry, nor a return address: a
    call's return comes back from the callee).  Such a block starts knowing whatever
    that block ended knowing."""
    preds: dict[int, list[int]] = {}
    for i, targets in enumerate(edges):
        block = blocks[i]
        w = block[-1].word if block else 0
        call = w & 0x7F == d.OP_JALR or (w & 0x7F == d.OP_JAL and d.rd(w))
        for j in set(targets):
            preds.setdefault(j, []).append(-1 if call else i)
    return {j: p[0] for j, p in preds.items()
            if len(p) == 1 and 0 <= p[0] < j and j not in entries}


def _reserves(blocks: list[list[Insn]], edges: list[list[int]],
              entries: set[int]) -> dict[int, int]:
    """Budget checks: block -> the most instructions run from it before the next check.

    Blocks are laid out so that every backward jump goes to a checked block; from a
    check, forward jumps alone reach the next one (or an exit) after a bounded run.
    """
    checked = {0} | entries | {j for i, targets in enumerate(edges) for j in targets if j <= i}
    longest = [0] * len(blocks)
    for i in reversed(range(len(blocks))):
        longest[i] = len(blocks[i]) + max(
            (longest[j] for j in edges[i] if j > i and j not in checked), default=0)
    return {i: longest[i] for i in checked}
