"""The board as data and devices as plug-ins: --board, -device, errors, every subsystem."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGES, PASS_OR_FAIL
from emud import migration as mg
from emud.board import BoardError, Slot, default_board, parse_device
from emud.chardev import RingBackend
from emud.device import DeviceError
from emud.loader import load_elf
from emud.machine import Machine
from emud.memory import BusError
from emud.monitor.commands import info_irq, info_mtree, info_qtree
from emud.snapshots import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = Path(__file__).resolve().parent / "plugins" / "scratchpad.py"
SCRATCH = f"{PLUGIN}:Scratchpad"


def emud(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(ROOT)) | (env or {})
    return subprocess.run([sys.executable, "-m", "emud", "run", *args], capture_output=True,
                          text=True, timeout=120, env=environment)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emud: "), result.stderr
    return lines[0]


# --- the table ---------------------------------------------------------------------------


def test_the_built_in_board_is_the_table() -> None:
    board = default_board()
    machine = Machine(RingBackend())
    assert [d.id for d in machine.devices] == [s.id for s in board.slots] == [
        "syscon", "clint", "hpet", "plic", "uart0"]
    regions = {r.name: r.base for r in machine.bus.regions}
    assert regions == {"ram": 0x8000_0000, "syscon": 0x10_0000, "clint": 0x200_0000,
                       "plic": 0xC00_0000, "pl011": 0x1000_0000, "hpet": 0xFED0_0000}
    # irq = 32 wires the HPET's 32 outputs to PLIC 32..63; uart0.irq to PLIC 10
    hpet, plic = machine.device("hpet"), machine.device("plic")
    hpet.irqs[5].set(True)
    assert plic.inputs[37].level
    machine.device("uart0").irq.set(True)
    assert plic.inputs[10].level


def test_the_named_addresses_are_the_tables() -> None:
    """machine.py's names for the built-in map (tests, guests) follow the table."""
    from emud import machine as mach

    slots = {s.id: s for s in default_board().slots}
    assert (slots["syscon"].base, slots["clint"].base, slots["plic"].base) == (
        mach.SYSCON_BASE, mach.CLINT_BASE, mach.PLIC_BASE)
    assert (slots["uart0"].base, slots["uart0"].irq) == (mach.UART0_BASE, mach.UART0_IRQ)
    assert (slots["hpet"].base, slots["hpet"].irq) == (mach.HPET_BASE, mach.HPET_IRQ_BASE)
    assert default_board().ram_base == mach.RAM_BASE


def test_a_board_file_builds_the_machine(tmp_path: Path) -> None:
    text = (ROOT / "emud" / "boards" / "emud-virt.toml").read_text()
    board = tmp_path / "two-uarts.toml"
    board.write_text(text + '\n[[device]]\ntype = "pl011"\nid = "uart1"\nbase = 0x1000_1000\n'
                     'irq = 11\n')
    out0, out1 = tmp_path / "s0", tmp_path / "s1"
    result = emud("--board", str(board), str(IMAGES / "hello.elf"), "-serial", f"file:{out0}",
                  "-serial", f"file:{out1}")
    assert result.returncode == 0, result.stderr
    assert b"Hello" in out0.read_bytes() and out1.read_bytes() == b""


@pytest.mark.parametrize(("toml", "message"), [
    ('[[device]]\ntype = "pl011"\nid = "u"\nbase = 0x1000\n[[device]]\ntype = "syscon"\n'
     'base = 0x1800\n', "syscon: MMIO 0x1800..0x27ff overlaps u 0x1000..0x1fff"),
    ('[[device]]\ntype = "pl011"\n', "pl011: needs an address"),
    ('colour = 1\n', "unknown key 'colour'"),
    ('[[device]]\nbase = 1\n', "device 1: needs a 'type' string"),
    ('wires = ["clint.msip cpu.msi"]\n', "use 'DEVICE.OUTPUT -> DEVICE.INPUT'"),
    ('wires = ["clint.msip -> cpu.msi"]\n', "no device 'clint' on the board"),
    ('[[device]]\ntype = "clint"\nbase = 0x200_0000\nwires = 3\n', "wires"),
    ('= broken', "board"),
])
def test_bad_board_files_are_one_line(tmp_path: Path, toml: str, message: str) -> None:
    board = tmp_path / "bad.toml"
    board.write_text(toml)
    line = one_line_error(emud("--board", str(board), str(IMAGES / "hello.elf")))
    assert message in line


# --- -device -------------------------------------------------------------------------------


def test_device_help_lists_types_and_properties() -> None:
    result = emud("-device", "help")
    assert result.returncode == 0
    assert 'name "pl011", desc "ARM PL011 UART' in result.stdout
    assert 'name "hpet"' in result.stdout
    result = emud("-device", "hpet,help")
    assert result.returncode == 0
    assert "  timers=<uint8> - number of implemented timers (default: 3)" in result.stdout
    assert "  msi=<bool> - timers are FSB (MSI) capable (default: off)" in result.stdout
    result = emud("-device", f"{SCRATCH},help")
    assert "  fault=<uint32> - the value whose store raises (default: 0xdead)" in result.stdout
    assert "  trace events: scratch_write" in result.stdout
    listed = emud("-device", f"{SCRATCH},addr=0x2000", "--trace", "help").stdout.split()
    assert "scratch_write" in listed and "hpet_ram_read" in listed
    assert "IMAGE" in emud("-serial", "null").stderr
    assert "pl011_irq_state pl011_read" in emud("-device", "pl011,help").stdout


def test_an_installed_package_adds_types(tmp_path: Path) -> None:
    """The entry-point group `emud.devices`, read with importlib.metadata."""
    site = tmp_path / "site"
    dist = site / "emud_scratch-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: emud-scratch\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[emud.devices]\nscratchpad = scratchpad:Scratchpad\n")
    env = {"PYTHONPATH": os.pathsep.join((str(ROOT), str(site), str(PLUGIN.parent)))}
    result = emud("-device", "help", env=env)
    assert 'name "scratchpad", desc "scratchpad:Scratchpad"' in result.stdout
    result = emud(str(IMAGES / "hello.elf"), "-device", "scratchpad,addr=0x2000", "-serial",
                  "null", env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("device", "message"), [
    ("nosuch", "'nosuch' is not a valid device model name"),
    ("pl011,id=uart1,addr=0x10000800", "uart1: MMIO 0x10000800..0x100017ff overlaps uart0"),
    ("pl011,id=uart1,addr=0x10001000,irq=10",
     "uart1.irq: input plic.10 is already driven by uart0.irq"),
    ("pl011,id=uart1,addr=0x10001000,colour=red", "uart1: pl011: no property 'colour'"),
    ("pl011,id=uart1,addr=0x10001000,migrate-clk=maybe", "takes on/off, not 'maybe'"),
    ("pl011,id=uart0,addr=0x10001000", "uart0: a device with this id already exists"),
    ("pl011,id=uart1,addr=ten", "addr must be a number"),
    (f"{PLUGIN.parent / 'bad_import.py'}:Gpio",
     "bad_import.py:Gpio': import failed: ImportError: no module named 'gpio_hw'"),
    (f"{PLUGIN}:Nope", "has no Device class 'Nope'"),
    ("/no/such/file.py:Dev", "no file /no/such/file.py"),
    (f"{PLUGIN}:Broken", "broken: realize failed: ZeroDivisionError: realize exploded"),
    (f"{PLUGIN}:Picky,id=p1", "p1: needs a friend"),
    (f"{PLUGIN}:Pulse,id=p1,addr=0x2000", "p1: pulse has no MMIO window"),
    (f"{PLUGIN}:BadLines,id=b,irq=20", "b: output_lines() failed: KeyError: 'no lines today'"),
    ("pl011,id=uart 1,addr=0x10001000", "id 'uart 1' is not valid"),
    ("pl011,id=,addr=0x10001000", "id '' is not valid"),
    (f"{SCRATCH},id=s,addr=0x2000,irq=70", "s.irq: plic has no input '70'"),
])
def test_bad_devices_are_one_line_naming_the_device(device: str, message: str) -> None:
    line = one_line_error(emud(str(IMAGES / "hello.elf"), "-device", device, "-serial", "null"))
    assert message in line


def test_parse_device() -> None:
    slot = parse_device("pl011,id=uart1,addr=0x10001000,irq=11,migrate-clk=off")
    assert slot == Slot("pl011", "uart1", 0x1000_1000, 11, {"migrate-clk": "off"})
    assert parse_device("hpet,help") is None
    with pytest.raises(BoardError, match="'x' is not PROP=VALUE"):
        parse_device("hpet,x")


# --- a second PL011 and a plug-in, through every subsystem ----------------------------------


def two_uarts() -> tuple[Machine, RingBackend, RingBackend]:
    s0, s1 = RingBackend(), RingBackend()
    machine = Machine([s0, s1], devices=[
        Slot("pl011", "uart1", 0x1000_1000, 11),
        Slot(SCRATCH, "pad", 0x1000_2000, 12)])
    machine.load(load_elf(IMAGES / "hello.elf"))
    return machine, s0, s1


def test_second_uart_has_its_own_serial_line_and_section(tmp_path: Path) -> None:
    machine, s0, s1 = two_uarts()
    uart1 = machine.device("uart1")
    machine.bus.write(0x1000_1000, ord("Z"), 4)  # uart1 DR
    assert s1.read(10) == b"Z" and s0.read(10) == b""
    uart1.write(0x38, 0x20, 4)  # IMSC: TX interrupt enabled
    assert machine.device("plic").inputs[11].level
    machine.bus.write(0x1000_2000, 7, 4)
    store = SnapshotStore(tmp_path / "s.sqlite")
    mg.savevm(machine, store, "a")
    snap = store.load("a")
    assert [(s.name, s.instance_id) for s in snap.sections] == [
        ("emud-clock", 0), ("clint", 0), ("hpet", 0), ("pl011", 0), ("pl011", 1),
        ("scratchpad", 0), ("plic", 0), ("cpu", 0)]
    machine.bus.write(0x1000_2004, 9, 4)
    uart1.write(0x38, 0, 4)
    changes = {(c.section, c.field) for c in mg.diff(machine, snap, mg.capture(machine))}
    assert {("pl011#1", "int_enabled"), ("scratchpad", "regs[1]")} <= changes
    mg.loadvm(machine, store, "a")
    assert uart1.int_enabled == 0x20 and machine.device("pad").regs[:2] == [7, 0]
    # A machine without the second UART refuses the snapshot, naming the boards.
    with pytest.raises(mg.MigrationError, match="the snapshot's board is emud-virt .*uart1"):
        mg.restore(Machine(RingBackend()), snap)
    # The QEMU stream carries instance 1 and imports into the same board.
    stream = mg.export_stream(machine, snap)
    mg.restore(machine, mg.import_stream(machine, stream))


class _Mon:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine


def test_qtree_mtree_irq_list_every_device() -> None:
    machine, _, _ = two_uarts()
    m = _Mon(machine)
    tree = {d["id"]: d for d in info_qtree(m)}  # type: ignore[arg-type]
    assert tree["uart1"]["type"] == "pl011" and tree["uart1"]["mmio"] == [0x1000_1000, 0x1000]
    assert tree["uart1"]["properties"]["chardev"] == "serial1"
    assert tree["pad"]["properties"] == {"fault": 0xDEAD}
    names = [r["name"] for r in info_mtree(m)]  # type: ignore[arg-type]
    assert "pl011 (uart1)" in names and "scratchpad (pad)" in names
    machine.bus.write(0x1000_2000, 1, 4)  # the plug-in raises its line: PLIC 12
    plic = next(s for s in info_irq(m) if s["controller"] == "plic")  # type: ignore[arg-type]
    assert plic["counts"][12] == 1 and plic["names"][12].startswith("pad.")


def test_a_plugin_raising_in_mmio_is_a_bus_error_reported_once(
        capfd: pytest.CaptureFixture[str]) -> None:
    machine, _, _ = two_uarts()
    for _ in range(3):
        with pytest.raises(BusError):
            machine.bus.write(0x1000_200C, 0xDEAD, 4)
    err = capfd.readouterr().err.splitlines()
    assert err == ["emud: device pad: write of 0xdead at 0x1000200c (4 bytes) raised "
                   "RuntimeError: scratchpad bug (later errors: trace event device_error)"]
    assert machine.device_errors["pad"].endswith("RuntimeError: scratchpad bug")
    tree = {d["id"]: d for d in info_qtree(_Mon(machine))}  # type: ignore[arg-type]
    assert "scratchpad bug" in tree["pad"]["error"]
    machine.bus.write(0x1000_2008, 5, 4)  # the device still works for other accesses
    assert machine.device("pad").regs[2] == 5


def test_globals_apply_by_type_and_unknown_ones_are_refused() -> None:
    machine = Machine(RingBackend(), device_props={"pl011": {"migrate-clk": "off"}},
                      devices=[Slot("pl011", "uart1", 0x1000_1000)])
    assert [d.migrate_clk for d in machine.devices_of_serial()] == [False, False]
    with pytest.raises(DeviceError, match="no device 'gpio' takes properties here"):
        Machine(RingBackend(), device_props={"gpio": {"x": 1}})


# --- the real daemon: QMP, HMP, --trace, a second serial socket ---------------------------


async def test_plugin_and_second_uart_through_the_real_qmp_socket() -> None:
    import asyncio
    import re

    from qemu.qmp import QMPClient

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(IMAGES / "hello.elf"), "-S",
        "--qmp", "tcp:127.0.0.1:0", "-serial", "null", "-serial", "tcp:127.0.0.1:0,server",
        "-device", "pl011,id=uart1,addr=0x10001000,irq=11",
        "-device", f"{SCRATCH},id=pad,addr=0x10002000,irq=12", "--trace", "scratch_*",
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    qmp = QMPClient("board")
    try:
        banner = {}
        for _ in range(2):
            line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
            match = re.match(r"emud: (\S+).* listening on tcp:([\d.]+):(\d+)", line)
            assert match, line
            banner[match.group(1)] = (match.group(2), int(match.group(3)))
        reader, writer = await asyncio.open_connection(*banner["serial1"])
        await asyncio.wait_for(qmp.connect(banner["QMP"]), 15)
        await qmp.execute("x-emud-memory-write", {"addr": 0x1000_1000, "data": "4b000000"})
        assert await asyncio.wait_for(reader.read(1), 15) == b"K"  # uart1 -> serial1
        await qmp.execute("x-emud-memory-write", {"addr": 0x1000_2004, "data": "2a000000"})
        trace_line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
        assert trace_line == "scratch_write offset 0x4 value 0x2a\n"
        info = await qmp.execute("x-emud-query-scratchpad", {})
        assert info == {"regs": [0, 42, 0, 0], "id": "pad", "type": "scratchpad",
                        "base": 0x1000_2000, "plic-source": 12}
        assert (await qmp.execute("x-emud-query-pl011", {"id": "uart1"}))["base"] == 0x1000_1000
        with pytest.raises(Exception, match="Device 'pad' is not a pl011"):
            await qmp.execute("x-emud-query-pl011", {"id": "pad"})
        with pytest.raises(Exception, match="Device 'uart9' not found"):
            await qmp.execute("x-emud-query-pl011", {"id": "uart9"})
        text = await qmp.execute("human-monitor-command", {"command-line": "info clint"})
        assert text.startswith("clint (clint) @ 0x0000000002000000\r\n  msip: 0\r\n")
        text = await qmp.execute("human-monitor-command", {"command-line": "info plic"})
        assert text.startswith("plic: context 0 (hart 0, M-mode) threshold 0")
        text = await qmp.execute("human-monitor-command", {"command-line": "info pad"})
        assert text == ("pad (scratchpad) @ 0x0000000010002000, PLIC source 12\r\n"
                        "  regs: [0, 42, 0, 0]\r\n")
        text = await qmp.execute("human-monitor-command", {"command-line": "info uart1"})
        assert text.startswith("uart1 @ 0x0000000010001000: chardev serial1, PLIC source 11")
        # The plug-in's bug: the store fails as a bus error, the daemon goes on.
        with pytest.raises(Exception, match="Cannot access memory at 0x1000200c"):
            await qmp.execute("x-emud-memory-write", {"addr": 0x1000_200C, "data": "adde0000"})
        trace_line = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
        assert trace_line == "scratch_write offset 0xc value 0xdead\n"
        report = (await asyncio.wait_for(proc.stderr.readline(), 15)).decode()
        assert report.startswith("emud: device pad: write of 0xdead at 0x1000200c")
        tree = await qmp.execute("human-monitor-command", {"command-line": "info qtree"})
        assert 'dev: scratchpad, id "pad"' in tree and "error: write of 0xdead" in tree
        assert (await qmp.execute("query-status"))["status"] == "prelaunch"
        writer.close()
        await qmp.execute("quit")
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        with contextlib.suppress(Exception):
            await qmp.disconnect()


def test_a_guest_store_into_a_raising_plugin_is_a_store_access_fault(
        build_asm: object, capfd: pytest.CaptureFixture[str]) -> None:
    """The guest sees mcause 7 (store/AMO access fault) with mtval the address, and goes on."""
    image = build_asm(  # type: ignore[operator]
        """
.globl _start
_start:
    la t0, handler
    csrw mtvec, t0
    li t0, 0x1000200c
    li t1, 0xdead
    sw t1, 0(t0)            # the plug-in raises: an access fault
    li t0, 0x100000         # not reached: the handler powers off
    sw zero, 0(t0)
.align 2
handler:
    csrr a0, mcause
    csrr a1, mtval
    li t0, 7
    bne a0, t0, fail
    li t0, 0x1000200c
    bne a1, t0, fail
""" + PASS_OR_FAIL)
    machine = Machine(RingBackend(), devices=[Slot(SCRATCH, "pad", 0x1000_2000)])
    machine.load(load_elf(image))
    assert machine.run_until_poweroff() == 0
    assert "emud: device pad: write of 0xdead" in capfd.readouterr().err


def test_gdb_memory_map_covers_a_plugin_region() -> None:
    from emud.daemon import Daemon
    from emud.gdbserver import EmudTarget

    machine, _, _ = two_uarts()
    xml = EmudTarget(Daemon(machine)).memory_map()
    assert '<memory type="ram" start="0x10002000" length="0x10"/>' in xml
    assert '<memory type="ram" start="0x10001000" length="0x1000"/>' in xml


def test_a_plugin_raising_in_reset_is_reported_and_the_run_goes_on(
        capfd: pytest.CaptureFixture[str]) -> None:
    machine = Machine(RingBackend(), devices=[Slot(f"{PLUGIN}:BadReset", "br")])
    machine.load(load_elf(IMAGES / "hello.elf"))  # load resets the machine
    assert machine.run_until_poweroff() == 0
    assert "emud: device br: reset raised RuntimeError: reset bug" in capfd.readouterr().err
