"""Reverse execution with the real gdb-multiarch against `emud run --gdb` (counter.elf)."""

from __future__ import annotations

from pathlib import Path

from test_gdb_e2e import COUNTER, Emud, Gdb, emud_fixture, gdb_fixture  # noqa: F401

from emud.loader import load_elf

SYMBOLS = load_elf(COUNTER).symbols


async def registers(gdb: Gdb) -> list[str]:
    payload, _ = await gdb.cmd("-data-list-register-values x " + " ".join(map(str, range(33))))
    return [r["value"] for r in payload["register-values"]]


async def run_to_bump(gdb: Gdb, times: int) -> None:
    await gdb.cmd("-break-insert bump")
    for _ in range(times):
        await gdb.resume()
    await gdb.cmd("-break-delete")


async def test_reverse_stepi_then_stepi_retraces_every_register(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    await run_to_bump(gdb, 3)
    steps = 40
    forward = [await registers(gdb)]
    for _ in range(steps):
        await gdb.resume("-exec-step-instruction")
        forward.append(await registers(gdb))
    for n in range(steps, 0, -1):  # back through the same states, newest first
        stop = await gdb.resume("-exec-step-instruction --reverse")
        assert stop["reason"] == "end-stepping-range"
        assert await registers(gdb) == forward[n - 1], n
    for n in range(1, steps + 1):
        await gdb.resume("-exec-step-instruction")
        assert await registers(gdb) == forward[n], n


async def test_reverse_continue_finds_the_last_writer(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    await run_to_bump(gdb, 5)
    await gdb.resume("-exec-finish")  # counter is 5 now, back in main
    assert await gdb.value("counter") == "5"
    await gdb.cmd("-break-watch counter")
    stop = await gdb.resume("-exec-continue --reverse")
    assert stop["reason"] == "watchpoint-trigger", stop
    assert stop["value"] == {"old": "5", "new": "4"}
    pc = int(stop["frame"]["addr"], 16)
    assert SYMBOLS["bump"] <= pc < SYMBOLS["main"] if SYMBOLS["bump"] < SYMBOLS["main"] \
        else SYMBOLS["bump"] <= pc
    assert stop["frame"]["func"] == "bump"
    assert "sw\t" in await gdb.console("x/i $pc"), "the pc of the writing store"
    stop = await gdb.resume("-exec-continue --reverse")  # the write before: 4 -> 3
    assert stop["reason"] == "watchpoint-trigger" and stop["value"] == {"old": "4", "new": "3"}
    await gdb.cmd("-break-delete")
    stop = await gdb.resume("-exec-continue --reverse")
    # The start of history (replaylog:begin; this gdb's MI gives that stop no reason).
    assert stop.get("reason", "no-history") == "no-history", stop
    assert stop["frame"]["func"] == "_start"
    assert await gdb.value("$pc") == "0x80000000 <_start>"
    assert await gdb.value("counter") == "0"


async def test_reverse_finish_next_and_step(emud: Emud, gdb: Gdb) -> None:
    await emud.attach(gdb)
    await run_to_bump(gdb, 2)
    stop = await gdb.resume("-exec-finish --reverse")
    assert stop["frame"]["func"] == "main", stop
    assert await gdb.value("counter") == "1"
    stop = await gdb.resume("-exec-next --reverse")
    assert stop["reason"] == "end-stepping-range" and stop["frame"]["func"] == "main"
    stop = await gdb.resume("-exec-step --reverse")
    assert stop["frame"]["func"] in ("main", "bump"), stop


async def test_reverse_across_timer_interrupts(tmp_path: Path) -> None:
    """hpet_timers.elf: back over the entry of a timer interrupt and forward again."""
    image = COUNTER.parent / "hpet_timers.elf"
    daemon = await Emud.start(image, tmp_path / "uart.txt")
    gdb = await Gdb.start(image)
    try:
        await daemon.attach(gdb)
        await gdb.cmd("-break-insert trap_handler")
        await gdb.resume()
        await gdb.resume()  # the second interrupt's handler
        assert int(await gdb.value("$mcause")) < 0  # an interrupt, not an exception
        await gdb.cmd("-break-delete")
        states = [await registers(gdb)]
        for _ in range(25):  # back out of the handler into the interrupted code
            await gdb.resume("-exec-step-instruction --reverse")
            states.append(await registers(gdb))
        assert states[-1][32] != states[0][32]
        for expected in reversed(states[:-1]):
            await gdb.resume("-exec-step-instruction")
            assert await registers(gdb) == expected
        await gdb.cmd("-break-insert trap_handler")
        stop = await gdb.resume("-exec-continue --reverse")  # the first interrupt's entry
        assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "trap_handler"
        assert int(await gdb.value("$mcause")) < 0
    finally:
        await gdb.close()
        await daemon.stop()


async def test_reverse_across_uart_input_interrupts(tmp_path: Path) -> None:
    """uart_echo.elf on a ringbuf: input given through gdb's `monitor ringbuf_write` is
    an input of the recording; back out of its RX interrupt handler and forward again."""
    import asyncio
    import re
    import sys

    from test_gdb_e2e import ROOT, TIMEOUT

    image = COUNTER.parent / "uart_echo.elf"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(image), "-S", "--gdb", "tcp:127.0.0.1:0",
        "-serial", "ringbuf", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), TIMEOUT)
    match = re.search(rb"listening on tcp:127\.0\.0\.1:(\d+)", line)
    assert match, line
    daemon = Emud(proc, int(match.group(1)), tmp_path / "unused")
    gdb = await Gdb.start(image)
    try:
        await daemon.attach(gdb)
        await gdb.cmd("-break-insert main")
        await gdb.resume()
        await gdb.console("monitor ringbuf_write serial0 xyz")
        await gdb.cmd("-break-insert trap_handler")
        await gdb.resume()  # the RX interrupt the input raised
        assert int(await gdb.value("$mcause")) < 0
        await gdb.cmd("-break-delete")
        states = [await registers(gdb)]
        for _ in range(20):  # back over the interrupt's entry
            await gdb.resume("-exec-step-instruction --reverse")
            states.append(await registers(gdb))
        for expected in reversed(states[:-1]):
            await gdb.resume("-exec-step-instruction")
            assert await registers(gdb) == expected
        await gdb.cmd("-break-insert trap_handler")
        stop = await gdb.resume("-exec-continue --reverse")  # no earlier interrupt: the start
        assert stop.get("reason", "no-history") == "no-history", stop
        assert await gdb.value("$pc") == "0x80000000 <_start>"
        stop = await gdb.resume()  # forward again: the logged input raises the same IRQ
        assert stop["reason"] == "breakpoint-hit" and int(await gdb.value("$mcause")) < 0
        assert await registers(gdb) == states[0]  # at the same instruction, same state
    finally:
        await gdb.close()
        await daemon.stop()
