"""The monitor commands: structured handlers and their HMP renderers.

QEMU's name and output wherever QEMU has the command; `x-emud-*` QMP names
for the structured twins QEMU lacks.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Callable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from emud import log, trace
from emud.chardev import RingBackend
from emud.clock import NEVER
from emud.cpu.disasm import ABI_NAMES, disassemble, insn_length
from emud.device import Device
from emud.hw.hpet import HPET
from emud.hw.pl011 import PL011
from emud.hw.plic import Plic
from emud.memory import BusError
from emud.monitor.core import CSR_BY_NAME
from emud.monitor.errors import MonitorError
from emud.monitor.hmpparse import MASK64, Format, parse_duration
from emud.monitor.registry import Registry

if TYPE_CHECKING:
    from emud.monitor.core import Monitor

REGISTRY = Registry()
command = REGISTRY.command

# The QEMU release whose QMP behaviour emud copies (clients gate features on it).
QEMU_VERSION = {"major": 10, "minor": 1, "micro": 0}
try:
    EMUD_VERSION = metadata.version("emud")
except metadata.PackageNotFoundError:  # running from a source tree
    EMUD_VERSION = "0.1.0"

# `info registers`: QEMU's M-mode CSR subset for riscv32, in QEMU's order.
DUMP_CSRS = ("mhartid", "mstatus", "mstatush", "mip", "mie", "mtvec", "mepc", "mcause", "mtval",
             "mscratch")


def device_info(m: Monitor, device: Device) -> dict[str, Any]:
    """A device's `info()` with the board's facts about it: id, type, MMIO base, the
    interrupt controller input its outputs start at, its serial backend."""
    machine = m.machine
    region = next((r for r in machine.bus.regions if r.device is device), None)
    slot = next(s for s in machine.board.slots if s.id == device.id)
    facts: dict[str, Any] = {"id": device.id, "type": device.name,
                             "base": None if region is None else region.base,
                             "plic-source": slot.irq}
    if device.wants_serial:
        facts["chardev"] = f"serial{machine.devices_of_serial().index(device)}"
    return device.info() | facts


def _find_device(m: Monitor, cls: type[Device], ident: str = "") -> Device:
    """The device `ident` (it must be a `cls`), or the first `cls` on the board."""
    for device in m.machine.devices:
        if isinstance(device, cls) and (device.id == ident or not ident):
            return device
    if ident and any(d.id == ident for d in m.machine.devices):
        raise MonitorError(f"Device '{ident}' is not a {cls.name}")
    raise MonitorError(f"Device '{ident or cls.name}' not found")


def _device_command(device_type: type[Device], ident: str) -> Callable[..., Any]:
    def handler(m: Monitor, id: str = ident) -> dict[str, Any]:  # noqa: A002 - QMP's name
        return device_info(m, _find_device(m, device_type, id))

    return handler


def machine_registry(machine: Any) -> Registry:
    """The commands for this machine: the fixed ones plus, for every device that renders
    an `info`, `info <id>` and QMP `x-emud-query-<type>` (`id` picks the instance)."""
    reg = REGISTRY.copy()
    for device in machine.devices:
        if not device.has_info():
            continue
        cls = type(device)
        if device.id not in reg.info:
            reg.command(info=device.id, render=cls.render_info,
                        help=f"show {device.id} ({cls.description or cls.name})")(
                _device_command(cls, device.id))
        query = f"x-emud-query-{cls.name}"
        if query not in reg.qmp:
            reg.command(qmp=query, args="id:s?")(_device_command(cls, ""))
    return reg


# --- help and session --------------------------------------------------------------------


def _help_line(prefix: str, name: str, params: str, text: str) -> str:
    return f"{prefix}{name} {params} -- {text}"


def _render_lines(lines: list[str]) -> str:
    return "\n".join(lines)


@command("help|?", args="name:S?", params="[cmd]", render=_render_lines,
         help="show the help", complete="commands")
def help_(m: Monitor, name: str = "") -> list[str]:
    reg = m.registry
    info = [_help_line("info ", c.name, c.params, c.help) for c in reg.info.values()]
    if name in ("info", "info "):
        return info
    if name.startswith("info "):
        sub = reg.info.get(name[5:].strip())
        if sub is None:
            raise MonitorError(f"unknown command: '{name}'", plain=True)
        return [_help_line("info ", sub.name, sub.params, sub.help)]
    lines = []
    for cmd in reg.hmp_commands():
        if not name or name in (cmd.name, *cmd.aliases):
            lines.append(_help_line("", cmd.spelling, cmd.params, cmd.help))
            if name:
                lines += cmd.details
    if name and not lines:
        raise MonitorError(f"unknown command: '{name}'", plain=True)
    return lines


@command("info", params="[subcommand]", help="show various information about the system state",
         render=_render_lines, complete="info")
def info(m: Monitor) -> list[str]:
    lines: list[str] = help_(m, "info")
    return lines


@command(info="version", qmp="query-version",
         help="show the QEMU release whose QMP emud follows, and emud's own version",
         render=lambda r: "{major}.{minor}.{micro}".format(**r["qemu"]) + f" ({r['package']})")
def info_version(m: Monitor) -> dict[str, Any]:
    return {"qemu": dict(QEMU_VERSION), "package": f"emud {EMUD_VERSION}"}


@command(qmp="query-commands")
def query_commands(m: Monitor) -> list[dict[str, str]]:
    return [{"name": name} for name in ("qmp_capabilities", *m.registry.qmp)]


@command(qmp="x-emud-query-hmp-commands")
def query_hmp_commands(m: Monitor) -> list[dict[str, Any]]:
    """Everything a client needs for completion and help: names, params, help, hooks."""
    out = []
    reg = m.registry
    for prefix, cmds in (("", reg.hmp_commands()), ("info ", list(reg.info.values()))):
        for cmd in cmds:
            out.append({"name": prefix + cmd.name, "aliases": list(cmd.aliases),
                        "params": cmd.params, "help": cmd.help, "complete": cmd.complete})
    return out


SYMBOL_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


@command(qmp="x-emud-query-completions")
def query_completions(m: Monitor) -> dict[str, list[str]]:
    """Dynamic completion sets: devices, registers, snapshot tags, trace events, chardevs."""
    try:
        tags = [s["tag"] for s in m.snapshots.list()] if m.snapshots is not None else []
    except MonitorError:  # an unreadable store must not break completion
        tags = []
    devices = [d.id for d in m.machine.devices]  # `info <id>`, and `info <type>` of built-ins
    devices += sorted({d.name for d in m.machine.devices} - set(devices))
    return {"devices": devices,
            "registers": ["pc", "fp", *(f"x{i}" for i in range(32)), *ABI_NAMES,
                          *sorted(CSR_BY_NAME)],
            "tags": tags, "events": [ev.name for ev in trace.events()],
            "chardevs": list(m.chardevs), "symbols": expression_symbols(m)}


def expression_symbols(m: Monitor) -> list[str]:
    """The image's symbols that an expression can name (`__global_pointer$` cannot)."""
    image = m.machine.image
    names = image.symbols if image is not None else {}
    return sorted(name for name in names if SYMBOL_NAME.fullmatch(name))


@command(info="status", qmp="query-status", help="show the current VM status (running|paused)",
         render=lambda r: "VM status: running" if r["running"] else
         "VM status: paused" + ("" if r["status"] == "paused" else f" ({r['status']})"))
def info_status(m: Monitor) -> dict[str, Any]:
    return {"running": m.daemon.running, "status": m.daemon.status}


# --- run control ------------------------------------------------------------------------


@command("stop|s", qmp="stop", help="stop emulation")
def stop(m: Monitor) -> None:
    m.daemon.stop()


@command("cont|c", qmp="cont", help="resume emulation")
def cont(m: Monitor) -> None:
    if m.daemon.status == "shutdown":
        raise MonitorError("Resetting the Virtual Machine is required")
    m.daemon.cont()


@command("system_reset", qmp="system_reset", help="reset the system")
def system_reset(m: Monitor) -> None:
    m.daemon.system_reset()


@command("system_powerdown", qmp="system_powerdown",
         help="send system power down event")
def system_powerdown(m: Monitor) -> None:
    m.daemon.emit("POWERDOWN")


@command("quit|q", qmp="quit", help="quit the emulator")
def quit_(m: Monitor) -> None:
    m.daemon.quit()


def _where(m: Monitor) -> dict[str, Any]:
    machine = m.machine
    pc = machine.hart.pc
    return {"pc": pc, "insn": _disas_at(m, pc)[1], "status": m.daemon.status,
            "ns": machine.clock.now_ns, "icount": machine.clock.icount}


def _render_where(r: dict[str, Any]) -> str:
    return f"0x{r['pc']:08x}:  {r['insn']}"


# A long step is a job the loop slices and `stop` or Ctrl-C ends; the bound catches typos.
MAX_STEP = 1_000_000_000


def _render_progress(r: dict[str, Any]) -> str:
    """The stop line, after a note when the command ended before its goal."""
    note = ""
    if r.get("executed", r.get("count")) != r.get("count"):
        note = f"stopped after {r['executed']} of {r['count']} steps ({r['status']})\n"
    elif r.get("target-ns") is not None and not r["completed"]:
        note = (f"stopped at {r['ns']} ns, before the target {r['target-ns']} ns "
                f"({r['status']})\n")
    return note + _render_where(r)


@command("step", args="count:l?", params="[n]", qmp="x-emud-step",
         help=f"execute n instructions (default 1, at most {MAX_STEP}) while the VM is stopped; "
              "`stop` or Ctrl-C in the shell ends it early", render=_render_progress)
async def step(m: Monitor, count: int = 1) -> dict[str, Any]:
    daemon = m.daemon
    if daemon.running:
        raise MonitorError("The VM is running; stop it first")
    if not 0 < count <= MAX_STEP:
        raise MonitorError(f"step count must be between 1 and {MAX_STEP}")
    if daemon.stepping:
        raise MonitorError("another step is in progress")
    executed = await daemon.step_async(count)
    return _where(m) | {"count": count, "executed": executed}


@command("run-for", args="duration:s", params="DURATION", qmp="x-emud-run-for",
         help="run for a span of virtual time (10ms, 5us, 1000ns, 2s; at most 3600s), then "
              "stop; `stop` or Ctrl-C in the shell ends it early", render=_render_progress)
async def run_for(m: Monitor, duration: str) -> dict[str, Any]:
    ns = parse_duration(duration)
    daemon = m.daemon
    if daemon.status == "shutdown":
        raise MonitorError("Resetting the Virtual Machine is required")
    target = m.machine.clock.now_ns + ns
    completed = await daemon.run_for(ns)
    return _where(m) | {"target-ns": target, "completed": completed}


# --- registers and memory ---------------------------------------------------------------


@command(info="registers", qmp="x-emud-query-registers",
         help="show the cpu registers (-v: decode mstatus, mie, mip, mtvec, mcause)",
         args="all:-a,verbose:-v", params="[-a] [-v]",
         render=lambda r: "\nCPU#0\n" + "\n".join(_register_lines(r)))
def info_registers(m: Monitor, all: bool = False,  # noqa: A002 - QEMU's -a (one hart)
                   verbose: bool = False) -> dict[str, Any]:
    hart = m.machine.hart
    csrs = {name: m.register_value(name) for name in DUMP_CSRS}
    result: dict[str, Any] = {"pc": hart.pc, "priv": hart.priv, "csrs": csrs,
                              "gpr": list(hart.x)}
    if verbose:
        result["decoded"] = decode_csrs(csrs)
    return result


IRQ_NAMES = {3: "MSI", 7: "MTI", 11: "MEI"}
PRIV_NAMES = {0: "U", 3: "M"}  # the privilege levels the hart has
EXCEPTIONS = {0: "instruction address misaligned", 1: "instruction access fault",
              2: "illegal instruction", 3: "breakpoint", 4: "load address misaligned",
              5: "load access fault", 6: "store/AMO address misaligned",
              7: "store/AMO access fault", 8: "environment call from U-mode",
              11: "environment call from M-mode"}
INTERRUPTS = {3: "machine software interrupt", 7: "machine timer interrupt",
              11: "machine external interrupt"}


def decode_csrs(csrs: dict[str, int]) -> dict[str, str]:
    """The privileged spec's field names for the CSRs people squint at."""
    mstatus, mtvec, mcause = csrs["mstatus"], csrs["mtvec"], csrs["mcause"]
    code = mcause & 0x7FFF_FFFF
    interrupt = bool(mcause >> 31)
    return {
        "mstatus": f"MIE={mstatus >> 3 & 1} MPIE={mstatus >> 7 & 1} MPP={mstatus >> 11 & 3}"
                   f" MPRV={mstatus >> 17 & 1} TW={mstatus >> 21 & 1}",
        "mie": " ".join(f"{n}E" for b, n in IRQ_NAMES.items() if csrs["mie"] >> b & 1) or "-",
        "mip": " ".join(f"{n}P" for b, n in IRQ_NAMES.items() if csrs["mip"] >> b & 1) or "-",
        "mtvec": f"base=0x{mtvec & ~3:08x} mode={('direct', 'vectored')[mtvec & 1]}",
        "mcause": f"{'interrupt' if interrupt else 'exception'} {code}: "
                  + ((INTERRUPTS if interrupt else EXCEPTIONS).get(code) or "reserved"),
    }


def _register_lines(r: dict[str, Any]) -> list[str]:
    lines = [f" {'pc':<8} {r['pc']:08x}", f" {'priv':<8} {PRIV_NAMES[r['priv']]}"]
    lines += [f" {name:<8} {value:08x}" for name, value in r["csrs"].items()]
    cells = [f" {f'x{i}/{ABI_NAMES[i]}':<8} {v:08x}" for i, v in enumerate(r["gpr"])]
    lines += ["".join(cells[i : i + 4]) for i in range(0, 32, 4)]
    lines += [f" {name:<8} {text}" for name, text in r.get("decoded", {}).items()]
    return lines


def _disas_at(m: Monitor, addr: int) -> tuple[int, str]:
    """(length, "bits  text") of the instruction at addr (QEMU's x/i layout), or (0, error)."""
    try:
        low = m.machine.bus.peek(addr, 2)
        length = insn_length(low)
        insn = low if length == 2 else low | m.machine.bus.peek(addr + 2, 2) << 16
    except BusError:
        return 0, "Cannot access memory"
    return length, f"{insn:0{2 * length}x}".ljust(18) + disassemble(insn, addr)


def _c_octal(value: int, width: int) -> str:
    return (("0" + format(value, "o")) if value else "0").rjust(width)


def _printc(value: int) -> str:
    """QEMU's monitor_printc of a C int (so only the low 32 bits count)."""
    value &= 0xFFFF_FFFF
    special = {ord("'"): "\\'", ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r"}
    if value in special:
        return f"'{special[value]}'"
    return f"'{chr(value)}'" if 32 <= value <= 126 else f"'\\x{value:02x}'"


# x and xp show at most this many lines (256 KiB as words, 16384 instructions), so one
# command neither holds the loop for long nor sends a reply of many megabytes.
MAX_DUMP_LINES = 16384


def _capped(lines: list[str], values: list[Any], addr: int) -> dict[str, Any]:
    lines.append(f"(output capped at {MAX_DUMP_LINES} lines; the next address is 0x{addr:x})")
    return {"lines": lines, "values": values, "truncated": True, "next": addr}


def memory_dump(m: Monitor, fmt: Format, addr: int, physical: bool) -> dict[str, Any]:
    """QEMU's memory_dump layout (16 bytes a line, 8 for bytes, address prefix) as `lines`,
    and the items themselves as `values` (integers, or instructions for /i)."""
    addr &= 0xFFFF_FFFF
    width = 16 if physical else 8
    lines: list[str] = []
    values: list[Any] = []
    if fmt.letter == "i":
        for done in range(fmt.count):
            if done == MAX_DUMP_LINES:
                return _capped(lines, values, addr)
            length, text = _disas_at(m, addr)
            lines.append(f"0x{addr:0{width}x}:  {text}")
            if not length:
                break
            values.append({"addr": addr, "length": length, "text": text[18:]})
            addr = (addr + length) & 0xFFFF_FFFF
        return {"lines": lines, "values": values}
    line_size = 8 if fmt.size == 1 else 16
    remaining = fmt.size * fmt.count
    size = 1 if fmt.letter == "c" else fmt.size  # chars: every byte of the items asked for
    digits = {"o": -(-size * 8 // 3), "u": -(-size * 80 // 33), "d": -(-size * 80 // 33)}.get(
        fmt.letter, size * 2)
    while remaining > 0:
        if len(lines) == MAX_DUMP_LINES:
            return _capped(lines, values, addr)
        chunk = min(remaining, line_size)
        prefix = f"{addr:0{width}x}:"
        try:
            data = m.machine.bus.read_bytes(addr, chunk)
        except BusError:
            lines.append(prefix + " Cannot access memory")
            break
        items = []
        for i in range(0, chunk, size):
            v = int.from_bytes(data[i : i + size], "little")
            values.append(v)
            if fmt.letter == "o":
                items.append(_c_octal(v, digits))
            elif fmt.letter == "u":
                items.append(f"{v:>{digits}}")
            elif fmt.letter == "d":
                signed = v - (1 << 64) if size == 8 and v >> 63 else v
                items.append(f"{signed:>{digits}}")
            elif fmt.letter == "c":
                items.append(_printc(v))
            else:
                items.append(f"0x{v:0{digits}x}")
        lines.append(prefix + "".join(" " + item for item in items))
        addr += chunk
        remaining -= chunk
    return {"lines": lines, "values": values}


DUMP_FORMATS = (
    "  /fmt is /{count}{format}{size}; a part left out keeps its last value",
    "  format: x hex, d signed decimal, u unsigned decimal, o octal, c char, i instruction",
    "  size: b 8-bit, h 16-bit, w 32-bit, g 64-bit (not used by i)",
    f"  at most {MAX_DUMP_LINES} lines a command; a note then gives the next address",
)


@command("x", args="fmt:/,addr:l", params="/fmt addr", render=lambda r: "\n".join(r["lines"]),
         help="virtual memory dump starting at 'addr'", details=DUMP_FORMATS)
def x(m: Monitor, fmt: Format, addr: int) -> dict[str, Any]:
    return memory_dump(m, fmt, addr, physical=False)


@command("xp", args="fmt:/,addr:l", params="/fmt addr", render=lambda r: "\n".join(r["lines"]),
         help="physical memory dump starting at 'addr'", details=DUMP_FORMATS)
def xp(m: Monitor, fmt: Format, addr: int) -> dict[str, Any]:
    return memory_dump(m, fmt, addr, physical=True)


def format_value(letter: str, value: int) -> str:
    """`print` of a 64-bit value: C's %#x / %#o (zero is plain 0), %u, %d, or a char."""
    value &= MASK64
    if letter == "x":
        return f"{value:#x}" if value else "0"
    if letter == "o":
        return _c_octal(value, 0)
    if letter == "u":
        return str(value)
    if letter == "c":
        return _printc(value)
    return str(value - (1 << 64) if value >> 63 else value)


@command("print|p", args="fmt:/,value:l", params="/fmt expr",
         help="print expression value (use $reg for CPU register access)",
         render=lambda r: r["text"], complete="expression", details=(
             "  format: x hex (the default), d signed decimal, u unsigned decimal, o octal, "
             "c char",
             "  expr: numbers (0x hex, 0 octal), $reg, ELF symbols, + - * / % & | ^ ~ ( )"))
def print_(m: Monitor, fmt: Format, value: int) -> dict[str, Any]:
    return {"value": value, "text": format_value(fmt.letter, value)}


@command("write", args="addr:l,value:l,size:l?", params="addr value [size]",
         help="write a value of 'size' bytes (1, 2, 4 or 8; default 4) at 'addr'")
def write(m: Monitor, addr: int, value: int, size: int = 4) -> None:
    if size not in (1, 2, 4, 8):
        raise MonitorError("size must be 1, 2, 4 or 8")
    _write_memory(m, addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def _write_memory(m: Monitor, addr: int, data: bytes) -> None:
    try:
        m.machine.bus.debug_write(addr, data)
    except BusError:
        raise MonitorError(f"Cannot access memory at 0x{addr:x}") from None
    if m.daemon.replay is not None:  # an input of the recorded run
        m.daemon.replay.memory_written(addr, data)


@command(qmp="x-emud-memory-read", args="addr:l,size:l,physical:b?")
def memory_read(m: Monitor, addr: int, size: int, physical: bool = True) -> dict[str, Any]:
    if not 0 < size <= 1 << 22:
        raise MonitorError("size must be between 1 and 4194304")
    try:
        data = m.machine.bus.read_bytes(addr, size)
    except BusError as e:
        raise MonitorError(f"Cannot access memory at 0x{e.addr:x}") from None
    return {"data": data.hex()}


@command(qmp="x-emud-memory-write", args="addr:l,data:s")
def memory_write(m: Monitor, addr: int, data: str) -> None:
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise MonitorError("data must be a string of hex digits") from None
    _write_memory(m, addr, raw)


# --- the machine ------------------------------------------------------------------------


@command(info="clock", qmp="x-emud-query-clock",
         help="show virtual time, instruction count and the next timer deadline",
         render=lambda r: "\n".join(_clock_lines(r)))
def info_clock(m: Monitor) -> dict[str, Any]:
    clock = m.machine.clock
    deadline = clock.next_deadline()
    targets = m.daemon.run_for_targets
    return {"mode": "icount", "shift": clock.shift, "ns": clock.now_ns, "icount": clock.icount,
            "next-deadline": None if deadline == NEVER else deadline,
            "run-for-target": min(targets) if targets else None}


def _clock_lines(r: dict[str, Any]) -> list[str]:
    deadline = r["next-deadline"]
    return [f"clock: {r['mode']} (shift={r['shift']}, {1 << r['shift']} ns per instruction)",
            f"virtual time: {r['ns']} ns",
            f"instructions: {r['icount']}",
            "next deadline: " + ("--" if deadline is None else
                                 f"{deadline} ns (+{deadline - r['ns']} ns)")]


@command(info="mtree", qmp="x-emud-query-mtree", help="show memory tree",
         render=lambda r: "\n".join(_mtree_lines(r)))
def info_mtree(m: Monitor) -> list[dict[str, Any]]:
    return [{"name": r.name if not isinstance(r.device, Device) or r.device.id == r.name
             else f"{r.name} ({r.device.id})", "base": r.base, "size": r.size,
             "kind": "ram" if r.device is None else "i/o"} for r in m.machine.bus.regions]


def _mtree_lines(regions: list[dict[str, Any]]) -> list[str]:
    lines = ["address-space: memory", "  0000000000000000-ffffffffffffffff (prio 0, i/o): system"]
    for r in regions:
        end = r["base"] + r["size"] - 1
        lines.append(f"    {r['base']:016x}-{end:016x} (prio 0, {r['kind']}): {r['name']}")
    return lines


@command(info="qtree", qmp="x-emud-query-qtree", help="show device tree",
         render=lambda r: "\n".join(_qtree_lines(r)))
def info_qtree(m: Monitor) -> list[dict[str, Any]]:
    regions = {r.device: r for r in m.machine.bus.regions if r.device is not None}
    devices = []
    for device in m.machine.devices:
        region = regions.get(device)
        props: dict[str, Any] = dict(device.property_values())
        if device.wants_serial:
            props["chardev"] = f"serial{m.machine.devices_of_serial().index(device)}"
        entry = {"type": device.name, "id": device.id, "properties": props,
                 "mmio": None if region is None else [region.base, region.size]}
        error = m.machine.device_errors.get(device.id)
        if error is not None:
            entry["error"] = error
        devices.append(entry)
    return devices


def _qtree_lines(devices: list[dict[str, Any]]) -> list[str]:
    lines = ["bus: main-system-bus", "  type System"]
    for dev in devices:
        lines.append(f'  dev: {dev["type"]}, id "{dev["id"]}"')
        for name, value in dev["properties"].items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int):
                text = f"{value} ({value:#x})"
            else:
                text = f'"{value}"'
            lines.append(f"    {name} = {text}")
        if dev["mmio"]:
            lines.append(f"    mmio {dev['mmio'][0]:016x}/{dev['mmio'][1]:016x}")
        if dev.get("error"):
            lines.append(f"    error: {dev['error']}")
    return lines


def _irq_lines(r: list[dict[str, Any]]) -> list[str]:
    lines = []
    for stats in r:
        lines.append(f"IRQ statistics for {stats['controller']}:")
        names = stats.get("names", {})
        lines += [f"{s:2d}: {n}" + (f"  {names[s]}" if s in names else "")
                  for s, n in stats["counts"].items()]
    return lines


def _source_names(m: Monitor, device: Device) -> dict[int, str]:
    """Who drives each counted line: the board's wiring into an interrupt controller, or,
    for a device that counts its own outputs (the CLINT), those outputs and where they go."""
    machine = m.machine
    board = machine.board
    inputs = device.input_lines()
    if not inputs:
        goes = {w.output: f"{w.dst}.{w.input}" for w in board.wires if w.src == device.id}
        return {n: f"{device.id}.{name}" + (f" -> {goes[name]}" if name in goes else "")
                for n, name in enumerate(device.output_lines())}
    names = {int(w.input): f"{w.src}.{w.output}" for w in board.wires
             if w.dst == device.id and w.input.isdigit()}
    if board.interrupt_controller == device.id:
        for slot in board.slots:
            if slot.irq is not None:
                source = machine.device(slot.id)
                outputs = list(source.output_lines())[:source.irq_outputs]
                names |= {slot.irq + n: f"{slot.id}.{name}" for n, name in enumerate(outputs)}
    return names


@command(info="irq", qmp="x-emud-query-irq", help="show the interrupts statistics (if available)",
         render=lambda r: "\n".join(_irq_lines(r)))
def info_irq(m: Monitor) -> list[dict[str, Any]]:
    """Every device that keeps statistics (QEMU's InterruptStatsProvider), board order:
    the PLIC's sources (MEI) and the CLINT's MSI and MTI, each named by what drives it."""
    out = []
    for device in m.machine.devices:
        counts = device.interrupt_stats()
        if counts is not None:
            names = _source_names(m, device)
            counted = {s: n for s, n in enumerate(counts) if n}
            out.append({"controller": device.id, "counts": counted,
                        "names": {s: names[s] for s in counted if s in names}})
    return out


@command(info="pic", qmp="x-emud-query-pic", help="show PIC state",
         render=lambda r: Plic.render_info(r))
def info_pic(m: Monitor) -> dict[str, Any]:
    return _find_device(m, Plic).info()


# --- devices ------------------------------------------------------------------------------


@command(info="pl011", qmp="x-emud-query-pl011", args="id:s?", params="[id]",
         help="show the PL011 UART registers, decoded, and its receive FIFO",
         render=lambda r: PL011.render_info(r))
def info_pl011(m: Monitor, id: str = "") -> dict[str, Any]:  # noqa: A002 - QMP's name
    return device_info(m, _find_device(m, PL011, id))


@command(info="hpet", qmp="x-emud-query-hpet", args="id:s?", params="[id]",
         help="show the HPET timers: mode, comparator, route and next deadline (virtual ns)",
         render=lambda r: HPET.render_info(r))
def info_hpet(m: Monitor, id: str = "") -> dict[str, Any]:  # noqa: A002 - QMP's name
    return device_info(m, _find_device(m, HPET, id))


@command(info="chardev", qmp="query-chardev", help="show the character devices",
         render=lambda r: "\n".join(f"{c['label']}: filename={c['filename']}" for c in r))
def info_chardev(m: Monitor) -> list[dict[str, Any]]:
    return [{"label": label, "filename": dev.describe(), "frontend-open": True}
            for label, dev in m.chardevs.items()]


def _ring(m: Monitor, device: str) -> RingBackend:
    dev = m.chardevs.get(device)
    if dev is None:
        raise MonitorError(f"Device '{device}' not found")  # GenericError, as QEMU says it
    if not isinstance(dev, RingBackend):
        raise MonitorError(f"{device} is not a ringbuf device")
    return dev


def _escape_ring(data: bytes) -> str:
    """HMP ringbuf_read: printable text as is, `\\` doubled, the rest as \\uXXXX."""
    text = data.decode("utf-8", errors="replace")
    return "".join("\\\\" if c == "\\" else c if c.isprintable() or c == "\n" else
                   f"\\u{ord(c):04x}" for c in text)


@command("ringbuf_read", args="device:s,size:l", params="device size",
         help="Read from a ring buffer character device", complete="chardevs expression",
         render=_escape_ring)
def ringbuf_read(m: Monitor, device: str, size: int) -> bytes:
    if size > 1 << 24:
        raise MonitorError("size is too large")
    return _ring(m, device).read(size)


@command(qmp="ringbuf-read", args="device:s,size:l,format:s?")
def qmp_ringbuf_read(m: Monitor, device: str, size: int, format: str = "utf8") -> str:  # noqa: A002
    data = ringbuf_read(m, device, size)
    if format == "base64":
        return base64.b64encode(data).decode()
    if format != "utf8":
        raise MonitorError(f"Parameter 'format' does not accept value '{format}'")
    return data.decode("utf-8", errors="replace")


def _utf8(data: str) -> bytes:
    """The bytes of `data`; a lone surrogate (JSON's \\udc80) has none, so it is refused."""
    try:
        return data.encode()
    except UnicodeEncodeError as e:
        raise MonitorError(f"data is not valid text: lone surrogate U+{ord(data[e.start]):04X} "
                           f"at character {e.start}") from None


@command("ringbuf_write", args="device:s,data:s", params="device data",
         help="Send data to the guest through a ring buffer character device "
              "(it arrives in the PL011's receive FIFO)", complete="chardevs")
def ringbuf_write(m: Monitor, device: str, data: str) -> None:
    _ring(m, device).feed(_utf8(data))
    m.daemon.wake.set()


@command(qmp="ringbuf-write", args="device:s,data:s,format:s?")
def qmp_ringbuf_write(m: Monitor, device: str, data: str, format: str = "utf8") -> None:  # noqa: A002
    if format == "base64":
        try:
            raw = base64.b64decode(data, validate=True)
        except ValueError:
            raise MonitorError("data is not valid base64") from None
    elif format == "utf8":
        raw = _utf8(data)
    else:
        raise MonitorError(f"Parameter 'format' does not accept value '{format}'")
    _ring(m, device).feed(raw)
    m.daemon.wake.set()


# --- tracing ------------------------------------------------------------------------------


@command(info="trace-events", args="name:s?", params="[name]", qmp="trace-event-get-state",
         help="show available trace-events & their state",
         render=lambda r: "\n".join(f"{e['name']} : state {int(e['state'] == 'enabled')}"
                                    for e in r))
def info_trace_events(m: Monitor, name: str = "*") -> list[dict[str, Any]]:
    return [{"name": ev.name, "state": "enabled" if ev.enabled else "disabled", "vcpu": False}
            for ev in trace.events(name)]


@command("trace-event", args="name:s,enable:b", params="name on|off", qmp="trace-event-set-state",
         help="changes status of a specific trace event", complete="events")
def trace_event(m: Monitor, name: str, enable: bool) -> None:
    if not trace.set_state(name, enable):
        raise MonitorError(f'unknown event "{name}"', plain=True)


@command("log", args="items:s", params="item1[,...]", qmp="x-emud-log",
         render=lambda r: r or "",
         help="activate logging of the specified items ('none' turns all off, 'help' lists)")
def log_items(m: Monitor, items: str) -> str:
    """QEMU's HMP `log`: the given items replace the enabled set, as `-d` does."""
    if items == "help":
        return log.help_text()
    try:
        log.set_items(log.parse_items(items))
    except ValueError as e:
        raise MonitorError(str(e), plain=True) from None
    return ""


@command("logfile", args="filename:s", params="filename", qmp="x-emud-logfile",
         render=lambda r: "",
         help="output logs to 'filename' (created private; 'stderr' goes back to stderr)")
def logfile(m: Monitor, filename: str) -> None:
    try:
        log.set_file(None if filename == "stderr" else filename)
    except OSError as e:
        raise MonitorError(f"could not open log file '{filename}': {e.strerror}",
                           plain=True) from None


# --- snapshots ----------------------------------------------------------------------------


def snapshot_store(m: Monitor) -> Any:
    if m.snapshots is None:
        raise MonitorError("Snapshots are not available: this daemon has no snapshot store")
    return m.snapshots


def _silent(result: Any) -> str:
    return ""  # HMP prints nothing on success; the structured result is for JSON callers


@command("savevm", args="name:s?", params="tag", complete="tags", render=_silent,
         help="save a VM snapshot. If no tag is provided, a new snapshot is created")
def savevm(m: Monitor, name: str = "") -> Any:
    return snapshot_store(m).save(name or time.strftime("vm-%Y%m%d%H%M%S"))


@command("loadvm", args="name:s", params="tag", complete="tags", render=_silent,
         help="restore a VM snapshot from its tag")
def loadvm(m: Monitor, name: str) -> Any:
    return snapshot_store(m).load(name)


@command("delvm", args="name:s", params="tag", complete="tags", render=_silent,
         help="delete a VM snapshot from its tag")
def delvm(m: Monitor, name: str) -> Any:
    return snapshot_store(m).delete(name)


class SnapshotList(list[dict[str, Any]]):
    """`info snapshots` rows; `verbose` (HMP -v) adds emud's storage columns."""

    verbose = False


@command(info="snapshots", qmp="x-emud-query-snapshots", args="verbose:-v", params="[-v]",
         help="show the currently saved VM snapshots (-v: stored bytes and shared RAM pages)",
         render=lambda r: "\n".join(_snapshot_lines(r, getattr(r, "verbose", False))))
def info_snapshots(m: Monitor, verbose: bool = False) -> list[dict[str, Any]]:
    rows = SnapshotList(snapshot_store(m).list())
    rows.verbose = verbose
    return rows


def _human_size(size: int) -> str:
    """QEMU's size_to_str: 3 significant digits, the unit changes at 1000 (`892 MiB`)."""
    exponent = math.frexp(size / (1000 / 1024))[1] if size else 1
    units = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    index = min(max(0, (exponent - 1) // 10), len(units) - 1)  # a u64 ends in EiB
    return f"{size / (1 << (10 * index)):.3g} {units[index]}B"


def _snapshot_lines(snaps: list[dict[str, Any]], verbose: bool = False) -> list[str]:
    if not snaps:
        return ["There is no snapshot available."]
    extra = f" {'STORED':>9} {'PAGES':>6} {'SHARED':>6} IMAGE" if verbose else ""
    lines = ["List of snapshots present on all disks:",
             f"{'ID':<7} {'TAG':<16} {'VM_SIZE':>8} {'DATE':>19} {'VM_CLOCK':>15} {'ICOUNT':>10}"
             + extra]
    for s in snaps:
        ns = s["vm-clock-nsec"]
        clock = (f"{ns // 3_600_000_000_000:04d}:{ns // 60_000_000_000 % 60:02d}:"
                 f"{ns // 1_000_000_000 % 60:02d}.{ns // 1_000_000 % 1000:03d}")
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["date-sec"]))
        icount = "--" if s.get("icount") is None else str(s["icount"])
        row = (f"{str(s['id']):<7} {s['tag']:<16} {_human_size(s['vm-state-size']):>8} "
               f"{date:>19} {clock:>15} {icount:>10}")
        if verbose:
            row += (f" {_human_size(s.get('stored-bytes', 0)):>9} {s.get('ram-pages', 0):>6} "
                    f"{s.get('shared-pages', 0):>6} {str(s.get('image-sha256'))[:12]}")
        lines.append(row)
    return lines


# --- QMP-only -----------------------------------------------------------------------------


@command(qmp="human-monitor-command", args="command-line:S,cpu-index:l?")
async def human_monitor_command(m: Monitor, **args: Any) -> str:
    text: str = await m.human_monitor_command(args["command-line"])
    return text.replace("\n", "\r\n")


@command(qmp="x-emud-hmp-json", args="command-line:S")
async def hmp_json(m: Monitor, **args: Any) -> Any:
    """The structured result behind an HMP line (what its text is rendered from)."""
    return await m.execute_hmp_structured(args["command-line"])


@command(qmp="x-emud-hmp", args="command-line:S")
async def hmp(m: Monitor, **args: Any) -> str:
    """An HMP line whose failure is a real QMP error (the shell relies on it)."""
    text: str = await m.execute_hmp(args["command-line"])
    return text
