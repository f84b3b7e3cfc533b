"""Record/replay and reverse execution in process: states, interrupts, inputs, files."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from conftest import IMAGES, Capture
from emud.chardev import CharBackend
from emud.loader import load_elf
from emud.machine import Machine, RunState
from emud.replay import Replay
from emud.replay.sessionfile import SessionError, SessionWriter, load, parse

SEED = 10


def machine(image: str, serial: CharBackend | None = None) -> Machine:
    m = Machine(serial or CharBackend())
    m.load(load_elf(IMAGES / image))
    return m


def state(m: Machine) -> tuple[object, ...]:
    hart = m.hart
    return (m.clock.icount, m.clock.now_ns, hart.pc, tuple(hart.x), hart.mstatus, hart.mip,
            hart.mcause, hart.mepc, hashlib.sha256(m.ram.data).hexdigest())


def run_recording(replay: Replay, m: Machine, insns: int, feeds: dict[int, bytes],
                  every: int = 997) -> dict[int, tuple[object, ...]]:
    """Run live in small slices, feeding host input at chosen counts (or when the guest
    sleeps with nothing to wake it); returns the state seen at each slice boundary."""
    seen: dict[int, tuple[object, ...]] = {}
    pending = sorted(feeds.items())
    idle = False
    while m.clock.icount < insns:
        while pending and (pending[0][0] <= m.clock.icount or idle):
            m.serial.feed(pending.pop(0)[1])
            seen[m.clock.icount] = state(m)  # a position is after the inputs at its count
            idle = False
        run = replay.run_slice(every)
        seen[m.clock.icount] = state(m)
        if run is RunState.POWEROFF or (run is RunState.IDLE and not pending):
            break
        idle = run is RunState.IDLE
    return seen


def test_seeks_across_timer_interrupts_reproduce_every_state() -> None:
    m = machine("hpet_timers.elf")
    replay = Replay(m, interval=50_000)
    seen = run_recording(replay, m, 400_000, {})
    exit_code = m.exit_code
    assert any(int(str(s[6])) >> 31 for s in seen.values()), "the guest took interrupts"
    rng = random.Random(SEED)
    for icount in rng.sample(sorted(seen), 25) + [max(seen)]:
        assert replay.seek(icount)
        assert state(m) == seen[icount], icount
    replay.seek(replay.head[0])
    assert replay.mode == "record" and m.exit_code == exit_code  # at the head again


def test_a_checkpoint_after_power_off_restores_a_powered_off_machine() -> None:
    m = machine("hpet_timers.elf")
    replay = Replay(m, interval=50_000, seconds=0.0)  # a checkpoint at every slice
    seen = run_recording(replay, m, 400_000, {})
    assert m.exit_code == 0
    assert replay.ring.items[-1].icount == m.clock.icount  # one taken at the head
    replay.seek(replay.start)
    assert m.exit_code is None
    replay.seek(replay.head[0])
    assert state(m) == seen[max(seen)] and m.exit_code == 0


def test_reverse_steps_then_steps_across_uart_input_interrupts() -> None:
    out = Capture()
    m = machine("uart_echo.elf", out)
    replay = Replay(m, interval=20_000)
    seen = run_recording(replay, m, 150_000, {3_000: b"abc", 3_100: b"de", 9_000: b"fgh"})
    live_output = bytes(out.sent)
    assert b"abcdefgh" in live_output
    head = m.clock.icount
    inputs = [e.icount for e in replay.events]
    assert len(inputs) == 3
    for icount in sorted(seen):
        assert replay.seek(icount) and state(m) == seen[icount], icount
    replay.seek(inputs[1] + 40)  # just after the second input's interrupt
    back = [state(m)]
    for _ in range(50):
        assert replay.reverse_step()
        back.append(state(m))
    for expected in reversed(back[:-1]):
        replay.step()
        assert state(m) == expected
    while m.clock.icount < head:  # on to the head: the output is not sent again
        replay.run_slice()
    assert state(m) == seen[head]
    assert bytes(out.sent) == live_output
    m.serial.feed(b"q")  # live again: input is taken and logged
    for _ in range(50):
        replay.run_slice()
    assert m.exit_code == 0 and b"echo: 9 bytes" in bytes(out.sent)


def test_reverse_continue_reports_the_last_watchpoint_trigger() -> None:
    from emud.cpu.debug import WATCH, Watchpoint

    m = machine("counter.elf")
    replay = Replay(m, interval=30_000)
    run_recording(replay, m, 200_000, {})
    counter = load_elf(IMAGES / "counter.elf").symbols["counter"]
    value = m.bus.read(counter, 4)
    m.hart.add_watchpoint(Watchpoint(counter, 4, WATCH))
    hit = replay.reverse_continue()
    assert hit is not None and hit.stop.addr == counter
    assert m.bus.read(counter, 4) == value  # just after the write of the last value
    assert replay.reverse_step() and m.bus.read(counter, 4) == value - 1


def record_session(tmp_path: Path) -> tuple[Path, tuple[object, ...], bytes]:
    out = Capture()
    m = machine("uart_echo.elf", out)
    replay = Replay(m, interval=20_000)
    path = tmp_path / "s.rr"
    writer = SessionWriter(path, m)
    replay.on_event = writer.event
    run_recording(replay, m, 200_000, {2_000: b"hi", 6_000: b"there q"})
    assert m.exit_code == 0
    writer.close(m.clock.icount, m.clock.now_ns)
    return path, state(m), bytes(out.sent)


def test_a_recorded_session_replays_byte_for_byte(tmp_path: Path) -> None:
    path, final, output = record_session(tmp_path)
    assert path.stat().st_mode & 0o077 == 0
    out = Capture()
    m = machine("uart_echo.elf", out)
    session = load(path, m)
    replay = Replay(m)
    replay.load_events(session.events, session.end)
    m.serial.feed(b"ignored")  # host input is refused while the session plays
    while replay.mode == "play" and m.exit_code is None:
        replay.run_slice()
    assert bytes(out.sent) == output and state(m) == final


def test_bad_session_files_are_refused_naming_the_problem(tmp_path: Path) -> None:
    path, _, _ = record_session(tmp_path)
    data = path.read_bytes()
    with pytest.raises(SessionError, match="truncated"):
        parse(data[: len(data) - 3])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x40
    with pytest.raises(SessionError, match="corrupt record"):
        parse(bytes(corrupt))
    with pytest.raises(SessionError, match="not an emud session file"):
        parse(b"hello" + data)
    with pytest.raises(SessionError, match="recorded with uart_echo.elf .* this run has "
                                           "counter.elf"):
        load(path, machine("counter.elf"))
    small = Machine(CharBackend(), ram_size=8 << 20)
    small.load(load_elf(IMAGES / "uart_echo.elf"))
    with pytest.raises(SessionError, match="16777216 bytes of RAM, this run has 8388608"):
        load(path, small)


def test_checkpoints_stay_under_the_budget() -> None:
    m = machine("compute.elf")
    replay = Replay(m, budget=40 << 20, interval=5_000)
    run_recording(replay, m, 400_000, {}, every=5_000)
    assert replay.ring.memory <= 40 << 20
    assert len(replay.ring.items) > 3


def test_checkpoints_by_host_time_change_no_guest_byte(tmp_path: Path) -> None:
    """seconds=0 takes a checkpoint after every live slice, as a slow host would; the
    states seen, every seek, and the session file are the same as with none by time."""
    runs = []
    for seconds in (None, 0.0):
        out = Capture()
        m = machine("uart_echo.elf", out)
        replay = Replay(m, interval=400, seconds=seconds)
        path = tmp_path / f"{seconds}.rr"
        writer = SessionWriter(path, m)
        replay.on_event = writer.event
        replay.on_checkpoint = lambda m=m, w=writer: w.mark(m.clock.icount, m.clock.now_ns)
        seen = run_recording(replay, m, 120_000, {2_000: b"ab", 7_000: b"cd q"}, every=37)
        writer.close(m.clock.icount, m.clock.now_ns)
        assert m.exit_code == 0 and len(seen) > 5
        sample = sorted(random.Random(SEED).sample(sorted(seen), min(15, len(seen))))
        seeks = [(replay.seek(i), state(m)) for i in sample]
        runs.append((seen, seeks, bytes(out.sent), path.read_bytes(), len(replay.ring.items)))
    (seen0, seeks0, out0, file0, n0), (seen1, seeks1, out1, file1, n1) = runs
    assert n1 > n0  # the time trigger did take checkpoints
    assert (seen0, seeks0, out0, file0) == (seen1, seeks1, out1, file1)


def test_gdb_register_writes_replay_including_the_privilege_level() -> None:
    """What gdb writes (x, pc, a CSR, $priv) is logged with the gdb target's own write
    and replays to the same state; refused writes log nothing."""
    from emud.daemon import Daemon
    from emud.gdbserver import CSR_REGBASE, PC_REGNUM, PRIV_REGNUM, EmudTarget

    m = machine("counter.elf")
    daemon = Daemon(m, exit_on_poweroff=False)
    replay = Replay(m, interval=5_000, seconds=None)
    daemon.attach_replay(replay)
    target = EmudTarget(daemon)
    run_recording(replay, m, 20_000, {})
    pc = m.hart.pc
    assert target.write_register(5, 0x1234)
    assert target.write_register(CSR_REGBASE + 0x340, 0xCAFE)  # mscratch
    assert target.write_register(PRIV_REGNUM, 0)
    assert not target.write_register(PRIV_REGNUM, 1)  # S-mode: refused, not logged
    assert not target.write_register(CSR_REGBASE + 0xC00, 7)  # read-only cycle
    assert target.write_register(PC_REGNUM, pc)
    assert len(replay.events) == 4
    after = state(m), m.hart.priv, m.hart.mscratch
    assert after[1:] == (0, 0xCAFE)
    assert replay.seek(10_000) and m.hart.priv == 3  # before the writes
    assert replay.seek(replay.head[0]) and (state(m), m.hart.priv, m.hart.mscratch) == after
