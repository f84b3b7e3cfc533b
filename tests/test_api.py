"""emud's public Python API (emud.Machine): running, state, UART, snapshots, serving."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import emud
from conftest import IMAGES, ROOT


def test_import_emud_is_cheap_and_exports_the_api() -> None:
    code = ("import sys, emud; heavy = [m for m in ('asyncio', 'elftools', 'qemu') "
            "if m in sys.modules]; print(heavy, emud.Machine.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.split() == ["[]", "emud.api"]
    assert {"Machine", "EmudError", "connect", "Stop"} <= set(dir(emud))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = emud.nothing


def test_run_until_uart_text_then_to_poweroff() -> None:
    m = emud.Machine(IMAGES / "hello.elf")
    stop = m.run(until=b"from")
    assert stop.reason == "until" and stop.match is not None
    assert stop.match.group() == b"from"
    assert m.uart.read() == b""  # the output up to the match was consumed
    stop = m.run()
    assert (stop.reason, stop.exit_code) == ("poweroff", 0)
    assert stop.symbol is not None and stop.symbol.startswith("poweroff")
    assert m.uart.read() == b" emud!\n"


def test_run_until_symbol_and_instruction_limit() -> None:
    m = emud.Machine(IMAGES / "counter.elf", accel="interp")
    stop = m.run(until="main")
    assert (stop.reason, stop.pc, stop.symbol) == ("until", m.symbols["main"], "main")
    assert not m.core.hart.breakpoints  # the target's breakpoint is gone again
    stop = m.run(instructions=1234)
    assert (stop.reason, stop.icount) == ("limit", m.icount)
    assert m.icount == stop.icount == m.run(until=m.symbols["main"], max_instructions=0).icount


def test_run_for_virtual_ns_is_exact_and_until_is_bounded() -> None:
    m = emud.Machine(IMAGES / "counter.elf", icount=2)
    assert m.run(ns=4000).reason == "limit"
    assert m.now_ns == 4000 and m.icount == 1000
    stop = m.run(until=b"never printed", max_instructions=50_000)
    assert stop.reason == "limit" and stop.match is None


def test_registers_csrs_memory_and_symbols() -> None:
    m = emud.Machine(IMAGES / "counter.elf")
    m.run(instructions=20_000)
    counter = m.symbols["counter"]
    assert m.read_u32("counter") == m.read_u32(counter) > 0
    m.write_u32("limit", m.read_u32("counter") + 1)
    stop = m.run()
    assert stop.reason == "poweroff"
    assert stop.exit_code == m.read_u32("counter") & 0xFF
    assert m.regs.a0 == m.regs["x10"] == m.regs["A0"]
    m.regs.t0 = 0x1234_5678
    m.regs["zero"] = 5
    assert (m.regs.x5, m.regs.zero) == (0x1234_5678, 0)
    assert m.csr.mstatus == m.csr["MSTATUS"] and m.csr["misa"] & 1 << 12  # M extension
    assert m.symbol_at(counter + 1) == "counter+0x1"
    with pytest.raises(KeyError, match="unknown register 'q9'"):
        _ = m.regs["q9"]
    with pytest.raises(AttributeError, match="unknown CSR 'nope'"):
        _ = m.csr.nope
    with pytest.raises(emud.EmudError, match="cannot read memory at 0x4"):
        m.read(4, 4)
    with pytest.raises(emud.EmudError, match="unknown symbol 'nosuch'"):
        m.run(until="nosuch")


def test_uart_input_goes_through_the_serial_path_and_expect_uses_virtual_time() -> None:
    m = emud.Machine(IMAGES / "uart_echo.elf")
    m.uart.expect("ready")
    m.uart.write(b"hi\r")
    assert m.uart.expect(re.compile(rb"h.")).group() == b"hi"
    with pytest.raises(emud.TimeoutError, match="serial0: no b'zzz'"):
        m.uart.expect("zzz", timeout_ns=1_000_000)


def test_semihosting_console_and_exit_code_through_the_api() -> None:
    with pytest.raises(emud.EmudError, match="semihosting is off"):
        emud.Machine(IMAGES / "hello.elf").console  # noqa: B018
    with emud.Machine(IMAGES / "semihost_hello.elf", semihosting=True) as m:
        assert m.console.expect(re.compile(rb"2 \+ 3 = (\d)")).group(1) == b"5"
        stop = m.run()
        assert (stop.reason, stop.exit_code) == ("poweroff", 7)
        assert m.console.read() == b"\nputs works too\nand stderr\n"
        assert m.uart.read() == b""  # semihosting output never reaches the PL011


def test_breakpoints_and_watchpoints_stop_the_run() -> None:
    m = emud.Machine(IMAGES / "counter.elf")
    m.break_at("main")
    assert m.run().reason == "breakpoint" and m.pc == m.symbols["main"]
    m.remove_break("main")
    m.watch("counter", 4)
    stop = m.run()
    assert (stop.reason, stop.address) == ("watchpoint", m.symbols["counter"])
    assert stop.symbol is not None and stop.symbol.startswith("bump")
    with pytest.raises(emud.EmudError, match="invalid watchpoint"):
        m.watch("counter", kind="sometimes")


def test_save_load_in_memory_is_deterministic_and_diff_names_changes() -> None:
    m = emud.Machine(IMAGES / "counter.elf", icount=1)
    m.run(instructions=10_000)
    snap = m.save()
    first = (m.run(instructions=30_000), m.uart.read(), m.regs.as_dict())
    changes = m.diff(snap)
    assert any(c.section == "cpu" and c.field == "pc" for c in changes)
    assert any(c.section == "ram" for c in changes)
    m.load(snap)
    assert m.icount == snap.icount == 10_000
    assert (m.run(instructions=30_000), m.uart.read(), m.regs.as_dict()) == first


def test_loading_a_snapshot_of_another_image_raises_and_changes_nothing() -> None:
    other = emud.Machine(IMAGES / "hello.elf")
    snap = other.save()
    m = emud.Machine(IMAGES / "counter.elf")
    m.run(instructions=5000)
    before = m.save()
    with pytest.raises(emud.SnapshotError, match="the snapshot is of .*hello.elf"):
        m.load(snap)
    assert m.diff(before) == []


def test_save_and_load_by_tag_through_the_store(tmp_path: Path) -> None:
    store = tmp_path / "snaps.sqlite"
    m = emud.Machine(IMAGES / "counter.elf", snapshots=store)
    m.run(instructions=8000)
    m.save("eight")
    pc = m.pc
    m.run(instructions=8000)
    assert m.snapshots() == ["eight"]
    fresh = emud.Machine(IMAGES / "counter.elf", snapshots=store)
    fresh.load("eight")
    assert (fresh.pc, fresh.icount) == (pc, 8000)
    with pytest.raises(emud.SnapshotError, match="'absent'"):
        fresh.load("absent")


def test_bad_configuration_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(emud.ConfigError, match="no such file"):
        emud.Machine(tmp_path / "missing.elf")
    with pytest.raises(emud.ConfigError, match="invalid RAM size"):
        emud.Machine(IMAGES / "hello.elf", ram="lots")
    with pytest.raises(emud.ConfigError, match="unknown accelerator"):
        emud.Machine(IMAGES / "hello.elf", accel="jit")
    with pytest.raises(emud.ConfigError, match="nodevice"):
        emud.Machine(IMAGES / "hello.elf", devices=["nodevice"])
    assert issubclass(emud.ConfigError, emud.EmudError)


def test_serving_lets_a_qmp_client_attach(tmp_path: Path) -> None:
    m = emud.Machine(IMAGES / "counter.elf")
    sock = tmp_path / "qmp.sock"
    with m.serving(qmp=f"unix:{sock}") as server:
        assert str(sock) in server.address("QMP")
        with emud.connect(f"unix:{sock}") as client:
            assert client.status() == "prelaunch"  # QEMU's name for -S
            client.run(ns=100_000)
            assert client.read_u32(m.symbols["counter"]) > 0
            assert client.regs["pc"] == client.pc
    assert m.icount == 100_000  # the machine is the test's again, where QMP left it


def test_serving_lets_real_gdb_attach_and_the_machine_keeps_its_state() -> None:
    from pygdbmi.gdbcontroller import GdbController

    m = emud.Machine(IMAGES / "counter.elf")
    with m.serving(gdb="tcp:127.0.0.1:0") as server:
        gdb = GdbController(["gdb-multiarch", "--nx", "--quiet", "--interpreter=mi3",
                             str(IMAGES / "counter.elf")])
        try:
            gdb.write(f"-target-select remote {server.address('gdb server')}",
                      timeout_sec=30)
            gdb.write("-break-insert bump", timeout_sec=30)
            responses = gdb.write("-exec-continue", timeout_sec=1, raise_error_on_timeout=False)
            stopped = [r for r in responses if r.get("message") == "stopped"]
            for _ in range(300):  # a safety net: ends on the *stopped record
                if stopped:
                    break
                stopped = [r for r in gdb.get_gdb_response(timeout_sec=0.1,
                                                           raise_error_on_timeout=False)
                           if r.get("message") == "stopped"]
            assert stopped and "bump" in str(stopped[0]["payload"])
            gdb.write("-break-delete", timeout_sec=30)
            gdb.write("-target-detach", timeout_sec=30)
        finally:
            gdb.exit()
    # gdb's detach resumed the guest until the block ended; the machine is the test's again
    assert m.run(until="bump").reason == "until" and m.pc == m.symbols["bump"]
    assert not m.core.hart.breakpoints  # gdb's breakpoint went with it


def test_sized_accessors_are_one_bus_access_so_mmio_registers_work() -> None:
    m = emud.Machine(IMAGES / "uart_echo.elf")
    m.uart.expect("ready")
    cr = 0x1000_0030  # PL011 CR: word accesses only
    assert m.read_u32(cr) & 0x301 == 0x301
    m.write_u32(cr, 0)
    assert m.read_u32(cr) == 0
    ram = 0x8000_0000 + (1 << 20)  # RAM the image does not use
    m.write_u16(ram, 0x1_2345)  # truncated to the access width
    assert (m.read_u16(ram), m.read_u8(ram + 1), m.read(ram, 2)) == (0x2345, 0x23, b"\x45\x23")
