"""The QMP server, driven by the unmodified qemu.qmp client and by raw sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import stat
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemu.qmp import EventListener, ExecuteError, QMPClient

from conftest import boot
from emud.daemon import Daemon
from emud.monitor import Monitor
from emud.monitor.qmp import QmpServer
from emud.monitor.qmpjson import JsonStreamer, dumps

# Counts in a0 forever; `count` is a word the host can read and write.
LOOP = """
    .globl _start
_start:
    la t0, count
1:  lw a0, 0(t0)
    addi a0, a0, 1
    sw a0, 0(t0)
    j 1b
    .data
    .balign 4096  # its own page: stores to it do not flush decoded code
    .globl count
count: .word 0
"""

TIMEOUT = 10.0


@dataclass
class Vm:
    daemon: Daemon
    server: QmpServer
    path: str
    elf: Path


@pytest.fixture
async def vm(build_asm: Callable[[str], Path]) -> AsyncIterator[Vm]:
    elf = build_asm(LOOP)
    daemon = Daemon(boot(elf), exit_on_poweroff=False)
    path = os.path.join(tempfile.mkdtemp(prefix="emud-qmp-"), "qmp.sock")
    server = QmpServer(Monitor(daemon), f"unix:{path}")
    await server.start()
    task = asyncio.create_task(daemon.run())
    yield Vm(daemon, server, path, elf)
    daemon.quit()
    await asyncio.wait_for(task, TIMEOUT)
    await server.close()


@pytest.fixture
async def client(vm: Vm) -> AsyncIterator[QMPClient]:
    qmp = QMPClient("test")
    await asyncio.wait_for(qmp.connect(vm.path), TIMEOUT)
    yield qmp
    await qmp.disconnect()


async def next_event(qmp: QMPClient, name: str) -> dict[str, Any]:
    async def wait() -> dict[str, Any]:
        async for event in qmp.events:
            if event["event"] == name:
                return dict(event)
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(wait(), TIMEOUT)


def strict_json(line: bytes) -> Any:
    """Parse a reply as JSON proper: NaN and Infinity, which Python accepts, are not JSON."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant} in {line[:200]!r}")

    assert line.endswith(b"\r\n") and line.isascii() and line.count(b"\n") == 1
    return json.loads(line, parse_constant=refuse)


class RawClient:
    """A plain socket client: to see exactly what goes over the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str, negotiate: bool = True) -> tuple[RawClient, bytes]:
        reader, writer = await asyncio.open_unix_connection(path)
        raw = cls(reader, writer)
        greeting = await raw.read_line()
        if negotiate:
            assert await raw.send({"execute": "qmp_capabilities"}) == {"return": {}}
        return raw, greeting

    async def read_line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), TIMEOUT)

    async def send_raw(self, data: bytes) -> dict[str, Any]:
        self.writer.write(data)
        while True:
            message: dict[str, Any] = strict_json(await self.read_line())
            if "event" not in message:
                return message

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        return await self.send_raw(json.dumps(message).encode() + b"\n")

    async def send_until(self, data: bytes, mark: str = "sync") -> list[dict[str, Any]]:
        """Send data then a query-status with id `mark`: the replies up to that one's."""
        self.writer.write(data + b'{"execute": "query-status", "id": "%s"}' % mark.encode())
        replies = []
        while True:
            reply: dict[str, Any] = strict_json(await self.read_line())
            if "event" in reply:
                continue
            replies.append(reply)
            if reply.get("id") == mark:
                assert "return" in reply
                return replies[:-1]

    def close(self) -> None:
        self.writer.close()


async def test_qemu_qmp_client_runs_commands_and_sees_events(client: QMPClient, vm: Vm) -> None:
    version = (await client.execute("query-version"))["qemu"]
    assert set(version) == {"major", "minor", "micro"}
    assert await client.execute("query-status") == {"running": True, "status": "running"}
    with client.listen(listener := EventListener()):
        await client.execute("stop")
        stop = await asyncio.wait_for(listener.get(), TIMEOUT)
        assert stop["event"] == "STOP"
        assert set(stop["timestamp"]) == {"seconds", "microseconds"}
        assert await client.execute("query-status") == {"running": False, "status": "paused"}
        await client.execute("cont")
        assert (await asyncio.wait_for(listener.get(), TIMEOUT))["event"] == "RESUME"
        await client.execute("system_reset")
        reset = await asyncio.wait_for(listener.get(), TIMEOUT)
        assert reset["event"] == "RESET"
        assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        await client.execute("system_powerdown")
        assert (await asyncio.wait_for(listener.get(), TIMEOUT))["event"] == "POWERDOWN"
    assert vm.daemon.running


async def test_errors_carry_qemu_classes(client: QMPClient) -> None:
    with pytest.raises(ExecuteError) as e:
        await client.execute("no-such-command")
    assert e.value.error_class == "CommandNotFound"
    assert e.value.error.error.desc == "The command no-such-command has not been found"
    with pytest.raises(ExecuteError) as e:
        await client.execute("human-monitor-command", {"command-line": 5})
    assert e.value.error.error.desc == "Invalid parameter type for 'command-line', expected: string"
    with pytest.raises(ExecuteError) as e:
        await client.execute("human-monitor-command")
    assert e.value.error.error.desc == "Parameter 'command-line' is missing"
    with pytest.raises(ExecuteError) as e:
        await client.execute("query-status", {"verbose": True})
    assert e.value.error.error.desc == "Parameter 'verbose' is unexpected"
    with pytest.raises(ExecuteError) as e:
        await client.execute("x-emud-memory-read", {"addr": 0x1000, "size": 4})
    assert e.value.error.error.desc == "Cannot access memory at 0x1000"
    with pytest.raises(ExecuteError) as e:
        await client.execute("ringbuf-read", {"device": "nope", "size": 4})
    assert e.value.error.error.desc == "Device 'nope' not found"
    assert await client.execute("query-status")  # the session survives all of it


async def test_wire_format_ids_and_negotiation(vm: Vm) -> None:
    raw, greeting = await RawClient.open(vm.path, negotiate=False)
    assert greeting.endswith(b"\r\n") and greeting.isascii()
    assert json.loads(greeting)["QMP"]["capabilities"] == []
    early = await raw.send({"execute": "query-status", "id": 1})
    assert early == {"id": 1, "error": {
        "class": "CommandNotFound",
        "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    oob = await raw.send({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}})
    assert oob == {"error": {"class": "GenericError", "desc": "Capability oob not available"}}
    assert await raw.send({"execute": "qmp_capabilities", "id": "n"}) == {"return": {}, "id": "n"}
    again = await raw.send({"execute": "qmp_capabilities"})
    assert again["error"]["class"] == "CommandNotFound"
    for ident in ("abc", 7, {"nested": [1, 2]}, None):
        reply = await raw.send({"execute": "query-status", "id": ident})
        assert reply["id"] == ident and reply["return"]["status"] == "running"
    assert "id" not in await raw.send({"execute": "query-status"})
    bad = await raw.send_raw(b'{"execute": "query-status" "id": 3}')
    assert bad["error"]["class"] == "GenericError" and "id" not in bad
    assert bad["error"]["desc"].startswith("JSON parse error")
    assert (await raw.send_raw(b"[1, 2]\n"))["error"]["desc"] == "QMP input must be a JSON object"
    assert (await raw.send({"id": 9}))["error"]["desc"] == "QMP input lacks member 'execute'"
    extra = await raw.send({"execute": "stop", "bogus": 1, "id": 4})
    assert extra == {"id": 4, "error": {"class": "GenericError",
                                        "desc": "QMP input member 'bogus' is unexpected"}}
    assert (await raw.send({"execute": "query-status"}))["return"]["running"]
    raw.close()


async def test_hmp_through_qmp(client: QMPClient, vm: Vm) -> None:
    await client.execute("stop")
    text = await client.execute("human-monitor-command", {"command-line": "info status"})
    assert text == "VM status: paused\r\n"
    listing = await client.execute("human-monitor-command", {"command-line": "help"})
    lines = listing.split("\r\n")
    assert "quit|q  -- quit the emulator" in lines
    assert all(" -- " in line for line in lines if line)
    # QEMU semantics: an HMP failure is text in a successful reply ...
    reply = await client.execute("human-monitor-command", {"command-line": "frobnicate"})
    assert reply == "unknown command: 'frobnicate'\r\n"
    # ... while x-emud-hmp reports it as a QMP error, for clients that must notice.
    with pytest.raises(ExecuteError) as e:
        await client.execute("x-emud-hmp", {"command-line": "x/q 0"})
    assert e.value.error.error.desc.startswith("invalid char in format: 'q'")
    # Any HMP command's structured result, the data its text is rendered from.
    bus = vm.daemon.machine.bus
    dump = await client.execute("x-emud-hmp-json", {"command-line": "xp/3wx 0x80000000"})
    assert dump["values"] == [bus.read(0x80000000 + 4 * i, 4) for i in range(3)]
    status = await client.execute("x-emud-hmp-json", {"command-line": "info status"})
    assert status == {"running": False, "status": "paused"}


async def test_structured_registers_and_memory(client: QMPClient, vm: Vm) -> None:
    await client.execute("stop")
    machine = vm.daemon.machine
    count = machine.image.symbols["count"] if machine.image else 0
    regs = await client.execute("x-emud-query-registers")
    assert regs["pc"] == machine.hart.pc and regs["gpr"] == machine.hart.x
    assert set(regs["csrs"]) >= {"mstatus", "mtvec", "mepc", "mcause"}
    await client.execute("x-emud-memory-write", {"addr": count, "data": "78563412"})
    assert machine.bus.read(count, 4) == 0x12345678
    read = await client.execute("x-emud-memory-read", {"addr": count, "size": 4})
    assert read == {"data": "78563412"}
    after = await client.execute("x-emud-step", {"count": 3})
    assert after["pc"] == machine.hart.pc and after["icount"] == machine.clock.icount


async def test_run_for_advances_virtual_time_exactly(client: QMPClient, vm: Vm) -> None:
    await client.execute("stop")
    clock = vm.daemon.machine.clock
    start = clock.now_ns
    with client.listen(listener := EventListener()):
        result = await client.execute("x-emud-run-for", {"duration": "20us"})
        assert (await asyncio.wait_for(listener.get(), TIMEOUT))["event"] == "RESUME"
        assert (await asyncio.wait_for(listener.get(), TIMEOUT))["event"] == "STOP"
    assert clock.now_ns - start == 20_000 == result["ns"] - start
    assert not vm.daemon.running


async def test_many_clients_and_vanishing_ones(vm: Vm) -> None:
    clients = [QMPClient(f"c{i}") for i in range(3)]
    for qmp in clients:
        await asyncio.wait_for(qmp.connect(vm.path), TIMEOUT)
    # A client vanishing mid-session, even with a half-sent command, changes nothing.
    raw, _ = await RawClient.open(vm.path)
    raw.writer.write(b'{"execute": "sto')
    raw.writer.transport.abort()
    await clients[0].execute("query-status")
    assert vm.daemon.running
    waits = [asyncio.ensure_future(next_event(qmp, "STOP")) for qmp in clients[1:]]
    await asyncio.sleep(0)
    await clients[0].execute("stop")
    for wait in waits:
        assert (await wait)["event"] == "STOP"
    await clients[2].disconnect()
    assert await clients[1].execute("query-status") == {"running": False, "status": "paused"}
    for qmp in clients[:2]:
        await qmp.disconnect()
    assert vm.daemon.status == "paused"


async def test_a_pipelining_client_that_reads_late_gets_every_reply(vm: Vm) -> None:
    # 24 capped memory dumps of about 1 MB each, sent at once before reading anything:
    # the server waits for the client to read instead of dropping it past its backlog.
    reader, writer = await asyncio.open_unix_connection(vm.path, limit=4 << 20)
    raw = RawClient(reader, writer)
    await raw.read_line()
    assert await raw.send({"execute": "qmp_capabilities"}) == {"return": {}}
    hmp = {"execute": "human-monitor-command",
           "arguments": {"command-line": "xp/65536wx 0x80000000"}}
    replies = await raw.send_until(b"".join(json.dumps(hmp | {"id": i}).encode()
                                            for i in range(24)))
    assert [r["id"] for r in replies] == list(range(24))
    assert all(r["return"].count("\n") > 16000 for r in replies)


async def test_quit_replies_then_announces_shutdown(vm: Vm) -> None:
    raw, _ = await RawClient.open(vm.path)
    assert await raw.send({"execute": "quit", "id": "q"}) == {"return": {}, "id": "q"}
    event = json.loads(await raw.read_line())
    assert event["event"] == "SHUTDOWN"
    assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}


async def test_socket_is_private(vm: Vm) -> None:
    assert stat.S_IMODE(os.stat(vm.path).st_mode) == 0o600


async def test_tcp_port_zero_reports_the_real_port(vm: Vm) -> None:
    server = QmpServer(Monitor(vm.daemon), "tcp:127.0.0.1:0")
    await server.start()
    try:
        host, port = server.description.removeprefix("tcp:").rsplit(":", 1)
        qmp = QMPClient("tcp")
        await asyncio.wait_for(qmp.connect((host, int(port))), TIMEOUT)
        assert (await qmp.execute("query-status"))["status"] == "running"
        await qmp.disconnect()
    finally:
        await server.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=40).filter(lambda b: not set(b) & set(b'{["')))
async def test_garbage_costs_an_error_and_nothing_else(vm: Vm, garbage: bytes) -> None:
    vm.daemon.stop()  # quicker round trips
    raw, _ = await RawClient.open(vm.path)
    raw.writer.write(garbage + b"\n")
    reply = await raw.send({"execute": "query-status", "id": "after"})
    while reply.get("id") != "after":  # one error reply per garbage value, without an id
        assert reply["error"]["class"] == "GenericError" and "id" not in reply
        reply = json.loads(await raw.read_line())
    assert reply["return"]["status"] == "paused"
    raw.close()


async def test_stale_socket_is_replaced_but_files_are_not(vm: Vm) -> None:
    folder = tempfile.mkdtemp(prefix="emud-qmp-")
    stale = os.path.join(folder, "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)  # left behind by a daemon that was killed: nobody listens
    server = QmpServer(Monitor(vm.daemon), f"unix:{stale}")
    await server.start()
    await server.close()
    regular = Path(folder, "notes.txt")
    regular.write_text("keep me")
    listeners = list(vm.daemon.listeners)
    with pytest.raises(OSError):
        await QmpServer(Monitor(vm.daemon), f"unix:{regular}").start()
    assert regular.read_text() == "keep me"
    assert vm.daemon.listeners == listeners


def errors(replies: list[dict[str, Any]]) -> list[str]:
    """The descriptions of replies that must all be GenericErrors without an id."""
    assert all(r.keys() == {"error"} and r["error"]["class"] == "GenericError" for r in replies)
    return [r["error"]["desc"] for r in replies]


async def test_nesting_is_limited_like_qemu_and_never_drops_the_client(vm: Vm) -> None:
    vm.daemon.stop()
    raw, _ = await RawClient.open(vm.path)
    deepest = b"[" * 1023 + b"]" * 1023  # with the request's braces: QEMU's limit, 1024
    raw.writer.write(b'{"execute": "query-status", "id": %s}' % deepest)
    echoed = await raw.read_line()  # too deep for Python's json module to read back
    assert echoed == b'{"return": {"running": false, "status": "paused"}, "id": %s}\r\n' % deepest
    too_deep = b'{"execute": "query-status", "id": ' + b"[" * 1024 + b"]" * 1024 + b"}"
    # QEMU drops the message at the 1025th bracket; each bracket left over is a stray.
    assert errors(await raw.send_until(too_deep)) == [
        "JSON nesting depth limit exceeded"] + ["JSON parse error, expecting value"] * 1025
    flood = errors(await raw.send_until(b"[" * 1025 * 100))  # each 1025th drops the lot
    assert flood == ["JSON nesting depth limit exceeded"] * 100
    raw.close()


async def test_replies_are_json_even_for_numbers_that_are_not(vm: Vm) -> None:
    raw, _ = await RawClient.open(vm.path)
    for number in (b"1e999", b"-1e999", b"1" * 400, b"-" + b"9" * 5000):
        replies = await raw.send_until(b'{"execute": "query-status", "id": %s}' % number)
        shown = number[:40].decode()
        assert errors(replies) == [f"JSON parse error, number {shown} is out of range"]
    for word in (b"NaN", b"Infinity", b"-Infinity"):
        replies = await raw.send_until(b'{"execute": "query-status", "id": %s}\n' % word)
        assert errors(replies)[0].startswith("JSON parse error, stray ")
    # Big but finite numbers are fine, integers echoed exactly.
    big = 10**300
    assert (await raw.send({"execute": "query-status", "id": big}))["id"] == big
    assert (await raw.send({"execute": "query-status", "id": 1.5e300}))["id"] == 1.5e300
    raw.close()


async def test_strings_follow_qemus_rules(vm: Vm) -> None:
    raw, _ = await RawClient.open(vm.path)
    for escape in ("\\ud800", "\\uDFFF", "\\ud83d\\u0041", "\\u12g4"):
        replies = await raw.send_until(b'{"execute": "query-status", "id": "x%sy"}'
                                       % escape.encode())
        shown = escape[:6]  # QEMU names the first escape: the pair is not one
        assert errors(replies) == [f"JSON parse error, {shown} is not a valid Unicode character"]
    for raw_bytes in (b"\xed\xa0\x80", b"\xc0\x80", b"\x80"):
        replies = await raw.send_until(b'{"execute": "query-status", "id": "%s"}' % raw_bytes)
        assert errors(replies) == ["JSON parse error, invalid UTF-8 sequence in string"]
    # A raw control character cannot be in a string: the message is lost, input resumes.
    replies = await raw.send_until(b'{"execute": "stop", "id": "a\x00b"}')
    assert errors(replies) == ["JSON parse error, stray '\"a'", "JSON parse error, expecting value"]
    assert vm.daemon.running
    pair = await raw.send_raw(b'{"execute": "query-status", "id": "\\ud83d\\ude00\\u0000"}')
    assert pair["id"] == "\U0001f600\0"  # an id may hold U+0000, as in QEMU ...
    # ... an argument may not: emud's commands would hand it to paths and names.
    for arguments in ({"device": "serial0", "data": "a\0"}, {"device": "serial0\0", "data": ""},
                      {"device": "serial0", "data": "", "format": "utf8\0"}):
        bad = next(name for name, value in arguments.items() if "\0" in value)
        reply = await raw.send({"execute": "ringbuf-write", "arguments": arguments, "id": 1})
        assert reply == {"id": 1, "error": {"class": "GenericError", "desc":
                         f"Invalid parameter '{bad}': a string must not contain U+0000"}}
    assert vm.daemon.machine.serial.read() == b""  # type: ignore[attr-defined]
    # The same for a tag, ringbuf data and a file name, before any command code runs.
    for name, arguments in (("x-emud-savevm", {"tag": "a\ud800"}),
                            ("ringbuf-write", {"device": "serial0", "data": "\udfff"}),
                            ("x-emud-snapshot-export", {"tag": "t", "file": "/tmp/\udbff"})):
        message = json.dumps({"execute": name, "arguments": arguments, "id": 2}).encode()
        desc = errors(await raw.send_until(message))[0]
        assert desc.endswith("is not a valid Unicode character")
        arguments = {key: value[:-1] + "\0" for key, value in arguments.items()}
        reply = await raw.send({"execute": name, "arguments": arguments, "id": 3})
        assert reply["error"]["desc"].endswith("a string must not contain U+0000")
    unknown = await raw.send({"execute": "nosuch", "arguments": {"a": "\0"}})
    assert unknown["error"]["class"] == "CommandNotFound"  # the command is looked up first
    raw.close()


async def test_a_command_that_fails_unexpectedly_gives_one_line(
        vm: Vm, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Monitor(vm.daemon).registry

    def broken(m: Monitor) -> None:
        raise RuntimeError("first line\nsecond line")

    def not_json(m: Monitor) -> dict[str, float]:
        return {"x": float("nan")}

    monkeypatch.setattr(registry.qmp["query-version"], "handler", not_json)
    raw, _ = await RawClient.open(vm.path)  # greeting sent before the patch below
    monkeypatch.setattr(registry.qmp["query-status"], "handler", broken)
    reply = await raw.send({"execute": "query-status", "id": 1})
    assert reply == {"id": 1, "error": {"class": "GenericError",
                     "desc": "internal error in 'query-status': first line second line"}}
    reply = await raw.send({"execute": "query-version", "id": 2})
    assert reply["id"] == 2 and reply["error"]["desc"].startswith("internal error")
    monkeypatch.setattr(registry.qmp["query-version"], "handler", lambda m: {"x": b"bytes"})
    reply = await raw.send({"execute": "query-version", "id": 3})
    assert reply["id"] == 3 and reply["error"]["desc"].startswith("internal error")
    monkeypatch.undo()
    assert (await raw.send({"execute": "query-status"}))["return"]["running"]
    raw.close()


async def test_hmp_errors_come_back_as_text_even_from_a_damaged_store(
        vm: Vm, tmp_path: Path) -> None:
    from emud.monitor.snapshots import SnapshotService

    vm.daemon.snapshots = SnapshotService(vm.daemon, tmp_path / "store.sqlite")
    raw, _ = await RawClient.open(vm.path)
    saved = await raw.send({"execute": "human-monitor-command",
                            "arguments": {"command-line": "savevm good"}})
    assert saved == {"return": ""}
    with sqlite3.connect(tmp_path / "store.sqlite") as db:  # a record damaged on disk
        db.execute("UPDATE snapshots SET config = '{' WHERE tag = 'good'")
    for line in ("info snapshots", "loadvm good", "info snapshots -v"):
        reply = await raw.send({"execute": "human-monitor-command",
                                "arguments": {"command-line": line}})
        text = reply["return"]
        assert text.startswith("Error: ") and text.endswith("\r\n") and text.count("\n") == 1
    assert (await raw.send({"execute": "query-status"}))["return"]["running"]
    raw.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans(), cuts=st.lists(st.integers(1, 50)))
def test_streamer_reads_what_json_writes_however_it_is_cut(
        value: Any, ascii_only: bool, cuts: list[int]) -> None:
    data = json.dumps({"v": value}, ensure_ascii=ascii_only).encode() * 2
    streamer, out, pos = JsonStreamer(), [], 0
    for cut in [*cuts, len(data)]:
        out += streamer.feed(data[pos:pos + cut])
        pos += cut
    assert out == [{"v": value}] * 2 and streamer.pending == 0
    assert dumps(value) == json.dumps(value)
