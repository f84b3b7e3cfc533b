"""`--trace-file`: the timeline as Chrome trace-event JSON, closed however the run ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_qmp_cli import TIMEOUT, qmp_daemon

from conftest import IMAGES, ROOT, boot
from emud.daemon import Daemon
from emud.loader import load_elf
from emud.timeline import Recorder


def events(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text.rstrip().endswith("]")  # closed, not only the format's tolerated open array
    parsed = json.loads(text)
    assert isinstance(parsed, list)
    return parsed


def named(evs: list[dict[str, Any]], cat: str) -> list[dict[str, Any]]:
    return [e for e in evs if e.get("cat") == cat]


def test_hpet_timers_timeline(tmp_path: Path) -> None:
    path = tmp_path / "hpet.json"
    result = subprocess.run(
        [sys.executable, "-m", "emud", "run", str(IMAGES / "hpet_timers.elf"),
         "--trace-file", str(path), "--trace", "hpet_ram_write"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert "hpet_ram_write" not in result.stderr  # enabled events go to the timeline
    evs = events(path)
    for e in evs:
        if e["ph"] != "M":  # virtual time: ts in µs is the exact ns / 1000
            assert e["ts"] == e["args"]["ns"] / 1000 if "ns" in e["args"] else e["ph"] == "C"
    threads = {e["args"]["name"] for e in evs if e["name"] == "thread_name"}
    assert threads == {"cpu", "irq", "timer", "uart", "trace", "daemon"}
    # IRQ line levels: the periodic timer's line goes up and down, the hart's MEI with it.
    hpet3 = [e for e in named(evs, "irq") if e["name"] == "hpet.3"]
    assert [e["args"]["level"] for e in hpet3[:4]] == [1, 0, 1, 0]
    assert any(e["name"] == "cpu.mei" and e["args"]["level"] == 1 for e in named(evs, "irq"))
    # Timer arms and fires, named by the HPET timer.
    timers = {e["name"] for e in named(evs, "timer")}
    assert {"arm hpet.timer0", "fire hpet.timer0"} <= timers
    arm = next(e for e in named(evs, "timer") if e["name"] == "arm hpet.timer0")
    assert arm["args"]["deadline_ns"] >= arm["args"]["ns"]
    # UART bytes spell what the guest printed.
    tx = [e for e in named(evs, "uart") if e["name"] == "uart0 tx"]
    assert bytes(e["args"]["byte"] for e in tx).decode() == result.stdout
    # Traps: the external interrupts the hart took, with epc.
    traps = named(evs, "cpu")
    assert traps and all(e["name"] == "m_external" for e in traps)
    assert all(e["args"]["cause"] == 0x8000_000B for e in traps)
    # The enabled trace event, with QEMU's message.
    trace = named(evs, "trace")
    assert trace and trace[0]["name"] == "hpet_ram_write"
    assert trace[0]["args"]["message"].startswith("enter hpet_ram_writel at 0x")
    # The end: the guest's poweroff.
    assert named(evs, "daemon")[-1]["name"] == "SHUTDOWN"


async def test_stops_snapshots_and_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    async with qmp_daemon(str(IMAGES / "counter.elf"), "-S", "--qmp", "tcp:127.0.0.1:0",
                          "--snapshots", str(tmp_path / "snaps.db"),
                          "--trace-file", str(path)) as (process, qmp):
        async def hmp(line: str) -> str:
            reply = await asyncio.wait_for(
                qmp.execute("human-monitor-command", {"command-line": line}), TIMEOUT)
            assert isinstance(reply, str)
            return reply

        await hmp("run-for 20us")
        assert await hmp("savevm one") == ""
        await hmp("run-for 30us")
        assert await hmp("loadvm one") == ""
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.proc.wait(), TIMEOUT) == 0
    evs = events(path)
    daemon = [(e["name"], e["args"]) for e in named(evs, "daemon")]
    names = [n for n, _ in daemon]
    assert names[:2] == ["RESUME", "STOP"]  # run-for: resume, stop at the target
    save = daemon[names.index("savevm")]
    load = daemon[names.index("loadvm")]
    assert save[1]["tag"] == load[1]["tag"] == "one"
    assert save[1]["ns"] == load[1]["ns"] == 20_000  # loadvm brings the saved time back
    assert names[-1] == "SHUTDOWN"


async def test_a_breakpoint_stop_is_a_daemon_event_with_its_pc(tmp_path: Path) -> None:
    """What gdb's `break` + `continue` does to the daemon, in process: the STOP says why."""
    machine = boot(IMAGES / "hello.elf")
    path = tmp_path / "bp.json"
    recorder = Recorder(machine, json_path=str(path))
    daemon = Daemon(machine, start_paused=True, exit_on_poweroff=False)
    recorder.attach_daemon(daemon)
    stopped = asyncio.Event()
    daemon.listeners.append(lambda name, data: stopped.set() if name == "STOP" else None)
    uart_puts = load_elf(IMAGES / "hello.elf").symbols["uart_puts"]
    machine.hart.set_breakpoint(uart_puts, True)
    task = asyncio.create_task(daemon.run())
    try:
        daemon.cont()
        await asyncio.wait_for(stopped.wait(), TIMEOUT)
    finally:
        daemon.quit()
        await asyncio.wait_for(task, TIMEOUT)
        recorder.close()
    stop = next(e for e in named(events(path), "daemon") if e["name"] == "STOP")
    assert stop["args"]["debug"] == f"break at 0x{uart_puts:08x}"
    assert stop["args"]["icount"] == machine.clock.icount


async def test_sigkill_leaves_whole_events(tmp_path: Path) -> None:
    """Killed with no chance to close: every event written is whole, only the `]` lacks."""
    path = tmp_path / "killed.json"
    async with qmp_daemon(str(IMAGES / "hpet_timers.elf"), "-S", "--qmp", "tcp:127.0.0.1:0",
                          "--trace-file", str(path)) as (process, qmp):
        await asyncio.wait_for(qmp.execute("human-monitor-command",
                                           {"command-line": "run-for 300us"}), TIMEOUT)
        process.proc.kill()
        await asyncio.wait_for(process.proc.wait(), TIMEOUT)
    text = path.read_text()
    assert not text.rstrip().endswith("]")
    evs = json.loads(text + "\n]")
    stop = [e for e in named(evs, "daemon") if e["name"] == "STOP"]
    assert stop and stop[-1]["args"]["ns"] == 300_000  # up to the last event before the kill
