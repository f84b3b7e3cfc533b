"""Whole-machine savevm/loadvm: determinism, all-or-nothing loads, diff, QEVM streams."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from conftest import IMAGES, boot, serial_text
from emud import migration as mg
from emud.machine import Machine
from emud.snapshots import Section, SnapshotData, SnapshotStore, StoreError
from emud.vmstate import QEMU_VM_SUBSECTION


def fingerprint(machine: Machine) -> tuple[Any, ...]:
    """Everything a load could disturb: every section's bytes, RAM, pc, clock, run flags."""
    snap = mg.capture(machine)
    return (tuple(snap.sections), snap.ram, machine.hart.pc, machine.clock.now_ns,
            machine.clock.icount, machine.exit_code, machine.device("hpet").property_values(),
            machine.device("uart0").read_count)


def run_until(machine: Machine, condition: Any, limit: int = 2_000_000) -> None:
    for _ in range(limit):
        if condition():
            return
        machine.run_slice(1)
    raise AssertionError("condition never met")


def replay(machine: Machine, store: SnapshotStore, tag: str, insns: int) -> tuple[Any, ...]:
    mg.loadvm(machine, store, tag)
    serial_text(machine)  # drop what was printed before
    machine.run_until_poweroff(max_insns=insns)
    return fingerprint(machine) + (serial_text(machine),)


def test_hpet_periodic_run_replays_byte_for_byte(tmp_path: Path) -> None:
    machine = boot(IMAGES / "hpet_timers.elf", icount_shift=2)
    store = SnapshotStore(tmp_path / "s.sqlite")
    # Save while an HPET interrupt is in flight: pending at the PLIC, not yet taken.
    hpet, plic = machine.device("hpet"), machine.device("plic")
    run_until(machine, lambda: hpet.isr != 0 and plic.pending != 0)
    mg.savevm(machine, store, "tick")
    first = replay(machine, store, "tick", 60_000)
    second = replay(machine, store, "tick", 60_000)
    assert first == second
    assert "periodic: 10 periods" in first[-1] or first[-1]  # it printed on the way


def test_uart_echo_with_bytes_in_the_fifo_replays(tmp_path: Path) -> None:
    machine = boot(IMAGES / "uart_echo.elf", icount_shift=1)
    store = SnapshotStore(tmp_path / "s.sqlite")
    machine.run_until_poweroff(max_insns=50_000)
    machine.serial.feed(b"hello, world q")
    run_until(machine, lambda: machine.device("uart0").read_count > 3)
    assert not machine.serial.pending_input or machine.device("uart0").read_count
    # Host-side input still queued is not machine state: deliver it all before saving.
    uart = machine.device("uart0")
    run_until(machine, lambda: not machine.serial.pending_input and uart.read_count)
    mg.savevm(machine, store, "rx")
    first = replay(machine, store, "rx", 100_000)
    second = replay(machine, store, "rx", 100_000)
    assert first == second
    assert first[-1].endswith("echo: 14 bytes\n")


def test_savevm_then_loadvm_restores_exactly(tmp_path: Path) -> None:
    machine = boot(IMAGES / "compute.elf")
    store = SnapshotStore(tmp_path / "s.sqlite")
    machine.run_until_poweroff(max_insns=100_000)
    before = fingerprint(machine)
    mg.savevm(machine, store, "a")
    machine.run_until_poweroff(max_insns=100_000)
    assert fingerprint(machine) != before
    mg.loadvm(machine, store, "a")
    assert fingerprint(machine) == before


# --- failed loads change nothing ------------------------------------------------------


@pytest.fixture
def saved() -> tuple[Machine, SnapshotData]:
    machine = boot(IMAGES / "hpet_timers.elf")
    machine.run_until_poweroff(max_insns=30_000)
    snap = mg.capture(machine)
    machine.run_until_poweroff(max_insns=10_000)  # the machine moves on from the snapshot
    return machine, snap


def with_section(snap: SnapshotData, name: str, data: bytes | None = None,
                 version: int | None = None) -> SnapshotData:
    sections = []
    for s in snap.sections:
        if s.name == name:
            if data is None and version is None:
                continue  # drop it
            s = Section(s.name, s.instance_id, s.version_id if version is None else version,
                        s.data if data is None else data)
        sections.append(s)
    return dataclasses.replace(snap, sections=sections)


def section(snap: SnapshotData, name: str) -> bytes:
    return next(s.data for s in snap.sections if s.name == name)


def refuse(machine: Machine, snap: SnapshotData, message: str) -> None:
    before = fingerprint(machine)
    with pytest.raises(mg.MigrationError, match=message):
        mg.restore(machine, snap)
    assert fingerprint(machine) == before


def test_config_mismatch_names_the_setting(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    config = dict(snap.config, ram_size=32 << 20)
    refuse(machine, dataclasses.replace(snap, config=config), "ram_size")
    other = boot(IMAGES / "hello.elf")
    # The image by file name and short digest, not as two 64-digit hashes.
    refuse(other, snap, r"the snapshot is of hpet_timers\.elf \(sha256 [0-9a-f]{16}\), "
           r"this machine runs hello\.elf \(sha256 [0-9a-f]{16}\)$")
    # The same build under another file name is the same image.
    renamed = dataclasses.replace(snap, config=dict(snap.config, image_name="copy.elf"))
    mg.stage(machine, renamed)


def test_version_too_new_and_too_old(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    refuse(machine, with_section(snap, "pl011", version=3), "pl011.*newer")
    refuse(machine, with_section(snap, "hpet", version=0), "hpet.*older")


def test_missing_unknown_and_duplicate_sections(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    refuse(machine, with_section(snap, "plic"), "section 'plic' is missing")
    extra = dataclasses.replace(snap, sections=[*snap.sections, Section("rtc", 0, 1, b"")])
    refuse(machine, extra, "unknown section 'rtc'")
    twice = dataclasses.replace(snap, sections=[*snap.sections, snap.sections[0]])
    refuse(machine, twice, "twice")


def test_bad_subsection_is_refused(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    data = section(snap, "pl011")
    assert b"pl011/clock" in data
    refuse(machine, with_section(snap, "pl011", data.replace(b"pl011/clock", b"pl011/clocx")),
           "pl011")


def test_hpet_timer_count_mismatch_keeps_the_property() -> None:
    four = Machine(boot(IMAGES / "hello.elf").serial, device_props={"hpet": {"timers": 4}})
    snap = mg.capture(four)
    three = Machine(four.serial)
    config = mg.machine_config(three)
    refuse(three, dataclasses.replace(snap, config=config), "hpet")
    assert three.device("hpet").property_values()["timers"] == 3


def test_pl011_bad_fifo_indices_are_refused(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    data = bytearray(section(snap, "pl011"))
    # read_pos is the int32 after 8 uint32s, the 16-entry FIFO and 4 more uint32s.
    read_pos = 4 * (8 + 16 + 4)
    data[read_pos : read_pos + 4] = (17).to_bytes(4, "big")
    refuse(machine, with_section(snap, "pl011", bytes(data)), "pl011")


def test_every_truncation_and_byte_flip_of_every_section(
        saved: tuple[Machine, SnapshotData]) -> None:
    """A flip may still decode to a valid state (a register value); it must never crash
    or half-apply: either a MigrationError with the machine unchanged, or a clean load."""
    machine, snap = saved
    before = fingerprint(machine)
    refused = 0
    for s in snap.sections:
        for cut in range(len(s.data)):
            try:
                mg.stage(machine, with_section(snap, s.name, s.data[:cut]))
            except mg.MigrationError as e:
                assert s.name in str(e)
            else:  # only a cut just before an optional subsection is still a valid section
                assert s.data[cut] == QEMU_VM_SUBSECTION, (s.name, cut)
        for index in range(len(s.data)):
            flipped = bytearray(s.data)
            flipped[index] ^= 0xFF
            try:
                mg.stage(machine, with_section(snap, s.name, bytes(flipped)))
            except mg.MigrationError as e:
                assert s.name in str(e)
                refused += 1
    assert fingerprint(machine) == before
    assert refused > 20  # subsection framing and names, bounds checks: many flips are caught


def test_every_byte_flip_in_the_store_is_detected(tmp_path: Path,
                                                  saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    store = SnapshotStore(tmp_path / "s.sqlite")
    store.save("t", snap)
    before = fingerprint(machine)
    rows = store.db.execute("SELECT rowid, data FROM sections").fetchall()
    for rowid, data in rows:
        for index in range(len(data)):
            flipped = bytearray(data)
            flipped[index] ^= 0x01
            for damaged in (bytes(flipped), data[:index]):  # a flip, and a truncation
                store.db.execute("UPDATE sections SET data = ? WHERE rowid = ?",
                                 (damaged, rowid))
                with pytest.raises(StoreError, match="corrupt"):
                    mg.loadvm(machine, store, "t")
        store.db.execute("UPDATE sections SET data = ? WHERE rowid = ?", (data, rowid))
    assert fingerprint(machine) == before
    mg.loadvm(machine, store, "t")  # intact again


# --- diff and streams -------------------------------------------------------------------


def test_diff_names_fields_and_page_ranges(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    machine.bus.write_bytes(0x8040_0010, b"x")
    machine.bus.write_bytes(0x8040_1ff0, b"y")
    now = mg.capture(machine)
    changes = mg.diff(machine, snap, now)
    fields = {(c.section, c.field) for c in changes}
    assert ("emud-clock", "icount") in fields and ("cpu", "pc") in fields
    assert ("ram", "0x80400000-0x80401fff") in fields
    assert mg.diff(machine, snap, snap) == []


def test_qevm_export_import_roundtrip(saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    stream = mg.export_stream(machine, snap)
    assert stream[:8] == bytes.fromhex("5145564d00000003")
    back = mg.import_stream(machine, stream)
    assert back.sections == snap.sections and back.ram == snap.ram and back.config == snap.config
    # The trailing vmdesc follows QEMU's layout: 0x06, be32 length, JSON.
    brace = stream.rindex(b'{"page_size"')
    assert stream[brace - 5] == 0x06
    for cut in (7, 20, len(stream) // 2, brace - 6):
        with pytest.raises(mg.MigrationError):
            mg.import_stream(machine, stream[:cut])


def test_loadvm_of_a_running_guest_stops_and_resumes_it(tmp_path: Path) -> None:
    from emud.daemon import Daemon
    from emud.monitor import MonitorError, SnapshotService

    daemon = Daemon(boot(IMAGES / "compute.elf"))
    events: list[str] = []
    daemon.listeners.append(lambda name, data: events.append(name))
    service = SnapshotService(daemon, tmp_path / "s.sqlite")
    service.save("a")
    daemon.machine.run_until_poweroff(max_insns=1000)
    with pytest.raises(MonitorError, match="does not exist"):
        service.load("b")
    assert events == [] and daemon.running  # a failed load touches nothing, run state included
    service.load("a")
    assert events == ["STOP", "RESUME"] and daemon.status == "running"
    assert daemon.machine.clock.icount == 0


def _first_page_word(snap: SnapshotData) -> tuple[int, bytes]:
    """The offset of the first non-zero RAM page and its record word in a stream."""
    offset = next(o for o in range(0, len(snap.ram), 4096) if any(snap.ram[o : o + 4096]))
    return offset, (offset | mg.RAM_PAGE).to_bytes(8, "big") + bytes([len(mg.RAM_IDSTR)])


@pytest.mark.parametrize("addr", [256 << 20, 1 << 30, 2 << 30, 1 << 63])
def test_import_refuses_a_page_outside_ram_without_allocating_for_it(
        saved: tuple[Machine, SnapshotData], addr: int) -> None:
    import tracemalloc

    machine, snap = saved
    stream = mg.export_stream(machine, snap)
    _, word = _first_page_word(snap)
    assert stream.count(word) == 1
    bad = stream.replace(word, (addr | mg.RAM_PAGE).to_bytes(8, "big") + word[8:])
    tracemalloc.start()
    try:
        with pytest.raises(mg.MigrationError, match=f"RAM page at {addr:#x} is outside"):
            mg.import_stream(machine, bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * machine.ram.size  # the configured RAM and copies of it, never `addr`


def test_import_refuses_a_ram_block_of_another_size(saved: tuple[Machine, SnapshotData]
                                                    ) -> None:
    machine, snap = saved
    stream = mg.export_stream(machine, snap)
    size = (len(snap.ram) | mg.RAM_MEM_SIZE).to_bytes(8, "big")
    bad = stream.replace(size, ((1 << 40) | mg.RAM_MEM_SIZE).to_bytes(8, "big"), 1)
    with pytest.raises(mg.MigrationError, match="RAM block"):
        mg.import_stream(machine, bad)


def test_import_refuses_a_stream_larger_than_its_ram_allows(
        saved: tuple[Machine, SnapshotData]) -> None:
    machine, snap = saved
    stream = mg.export_stream(machine, snap)
    with pytest.raises(mg.MigrationError, match="more than a stream"):
        mg.import_stream(machine, stream + bytes(mg.stream_size_limit(machine.ram.size)))


def test_damaged_ram_or_section_is_refused_by_name(saved: tuple[Machine, SnapshotData]) -> None:
    """Changes the stream format cannot see (a page's bytes, a register value) are caught
    by the digests emud writes into its emud-config section."""
    machine, snap = saved
    stream = mg.export_stream(machine, snap)
    offset, word = _first_page_word(snap)
    at = stream.index(word) + len(word) + len(mg.RAM_IDSTR)
    flipped = bytearray(stream)
    flipped[at + 100] ^= 0x01
    with pytest.raises(mg.MigrationError, match="the RAM is damaged"):
        mg.import_stream(machine, bytes(flipped))
    # The CPU's pc: a value any u32 may take, so only the digest can tell.
    cpu = next(s for s in snap.sections if s.name == "cpu")
    pc_at = stream.index(cpu.data) + 32 * 4
    flipped = bytearray(stream)
    flipped[pc_at + 3] ^= 0x04
    with pytest.raises(mg.MigrationError, match="section 'cpu' is damaged"):
        mg.import_stream(machine, bytes(flipped))
    back = mg.import_stream(machine, stream)
    assert back.ram == snap.ram and back.sections == snap.sections
