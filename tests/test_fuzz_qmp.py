"""Seeded, bounded fuzzing of the QMP socket of a real `emud run` process.

Inputs, in batches on one connection (each batch ends with a marker command
whose reply proves the connection is still usable): wrong types, unknown and
missing arguments for every command, unknown commands, odd ids, random HMP
lines through the three HMP doors, lone surrogates, U+0000, invalid UTF-8,
nesting beyond the limit, numbers beyond a double, and byte-mutated messages
(each followed by a 0xFF byte, which ends any unfinished message as QEMU's
lexer does), all written in random chunks so messages arrive split.

Every reply must be one line of real JSON with either "return" or an error
of a known class, none an "internal error"; every tracked request gets its
reply with its id; commands that are refused, or read only, leave the
machine (registers, clock, RAM digest, run state) as it was.  Commands that
change the machine are only ever sent with arguments that are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_qmp_cli import Process

from conftest import IMAGES, ROOT
from emud.monitor.commands import REGISTRY

SEED = 1515
BATCHES = 32
PER_BATCH = 700
TIMEOUT = 60.0
RAM = 1 << 20
CLASSES = {"GenericError", "CommandNotFound", "DeviceNotFound"}
# What may run with arguments that are accepted: it reads, and changes nothing.
READ_ONLY = {name for name in REGISTRY.qmp if name.startswith(("query-", "x-emud-query-"))} | {
    "x-emud-memory-read", "trace-event-get-state", "x-emud-snapshot-diff",
    "human-monitor-command", "x-emud-hmp", "x-emud-hmp-json"}
# HMP lines that only read; random arguments follow (`x` counts are kept small).
HMP_WORDS = ["info", "x", "xp", "p", "print", "help", "?", "frob", "", "info registers",
             "info status", "info mtree", "info qtree", "info hpet", "info pl011", "info irq",
             "info pic", "info snapshots", "info version", "info clock", "info chardev",
             "info trace-events", "snapshot diff", "x/4i", "x/8wx", "xp/2gx", "p/x", "x/3c"]
HMP_ARGS = ["$pc", "$a0", "$sp", "$mstatus", "$nosuch", "0x80000000", "-1", "0", "1+2*3",
            "(", ")", "((1))", "/", "/0", "%", "~1", "1/0", "1%0", "0x" + "f" * 20, "9" * 400,
            "_start", "nosuch", '"quoted"', "'x'", "\\", "@", "é", "\U0001f600", "\t", "-v",
            "1 << 70", ">>", "on", "off", "4294967296", ","]
WRONG_VALUES: list[Any] = [None, True, 1.5, -1, 1 << 64, -(1 << 63) - 1, 10**300, "", "x",
                           [], [1, "a"], {}, {"k": [None]}]
ODD_IDS: list[Any] = [None, 0, -1, 1 << 80, 10**300, 1.5e300, -0.0, "", "\u0000", "é\U0001f600",
                      "a\u2028b", [], {}, {"a": [1, {"b": None}]}, True, 1e-300]


@dataclass
class Item:
    data: bytes
    key: str | None = None  # tracked: its reply carries id [key, ...]
    expect: str = "any"  # "error", "return" or "any"
    ident: Any = None  # the id the reply must echo


def request(name: str, arguments: Any, key: str | None = None, ident: Any = None) -> bytes:
    message: dict[str, Any] = {"execute": name}
    if arguments is not None:
        message["arguments"] = arguments
    if key is not None:
        message["id"] = [key, ident]
    return json.dumps(message).encode()


def wrong(kind: str, value: Any) -> bool:
    """Whether QMP must refuse `value` for an argument of this kind."""
    if kind in "sS":
        return not isinstance(value, str)
    if kind in ("b", "flag"):
        return not isinstance(value, bool)
    return not isinstance(value, int) or isinstance(value, bool) or \
        not -(1 << 63) <= value < 1 << 64


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.commands = sorted(REGISTRY.qmp.items(), key=lambda item: item[0])
        self.wrong_typed: set[tuple[str, str]] = set()  # (command, argument) pairs tried

    def key(self) -> str:
        self.count += 1
        return f"t{self.count}"

    def value(self, kind: str) -> Any:
        rng = self.rng
        if kind in ("l", "i"):
            return rng.choice([0, 1, 4, 64, 0x80000000, 0x80000000 + RAM - 4, 0xFED00000,
                               0x10000000, -1, (1 << 64) - 1, 1 << 63])
        if kind == "b" or kind == "flag":
            return rng.random() < 0.5
        return self.hmp_line() if rng.random() < 0.5 else rng.choice(
            ["serial0", "nope", "", "utf8", "base64", "t0", "a b", "\u00e9", "x" * 300])

    def hmp_line(self) -> str:
        rng = self.rng
        words = [rng.choice(HMP_WORDS)] + [rng.choice(HMP_ARGS) for _ in range(rng.randrange(4))]
        if rng.random() < 0.1:
            depth = rng.randrange(1, 200)
            words.append("(" * depth + "1" + ")" * rng.choice([depth, depth - 1, 0]))
        return " ".join(words)

    def arguments(self, cmd: Any) -> dict[str, Any]:
        return {p.name: self.value(p.kind) for p in cmd.args
                if p.kind != "/" and (not p.optional or self.rng.random() < 0.5)}

    def refused(self) -> Item:
        """A request for any command that its arguments make fail, whatever it does."""
        rng = self.rng
        name, cmd = rng.choice(self.commands)
        args: Any = self.arguments(cmd)
        params = [p for p in cmd.args if p.kind != "/"]
        how = rng.randrange(4)
        if how == 0 and params:  # a wrong type
            param = rng.choice(params)
            args[param.name] = rng.choice([v for v in WRONG_VALUES if wrong(param.kind, v)])
            self.wrong_typed.add((name, param.name))
        elif how == 1 and any(not p.optional for p in params):  # one missing
            del args[rng.choice([p.name for p in params if not p.optional])]
        elif how == 2:  # one too many
            args[rng.choice(["bogus", "id", "arguments", "Device", "cpu_index"])] = 1
        else:  # one that does not exist, or arguments that are no object
            name = rng.choice([name + "x", name.upper(), "", "nosuch", " " + name])
            args = rng.choice([args, [], "x", 5])
        if rng.random() < 0.1:  # U+0000 in a string argument: refused for every command
            args = {"nul": "a\u0000"} | (args if isinstance(args, dict) else {})
        key = self.key()
        return Item(request(name, args, key), key, "error")

    def allowed(self) -> Item:
        rng = self.rng
        name = rng.choice(sorted(READ_ONLY))
        cmd = REGISTRY.qmp[name]
        args: dict[str, Any] = self.arguments(cmd)
        if name == "x-emud-memory-read":
            args["size"] = rng.choice([0, 1, 4, 4096, 1 << 22, 1 << 23])
        if "command-line" in args:
            args["command-line"] = self.hmp_line()
        ident = rng.choice(ODD_IDS)
        key = self.key()
        expect = "return" if name == "human-monitor-command" else "any"
        return Item(request(name, args or None, key, ident), key, expect, ident)

    def lexical(self) -> Item:
        """Input the JSON layer refuses: no reply can carry an id."""
        rng = self.rng
        field = rng.choice([
            b'"\\ud800"', b'"\\udfff x"', b'"\\ud83d\\u0041"', b'"\\u12G4"', b'"\\q"',
            b'"a\x00b"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\xff"', b'"\x80"', b'"a\tb"',
            b"1e999", b"-1e400", b"1" * 400, b"NaN", b"Infinity", b"-", b"01", b"1.", b"tru",
            b"[" * 1025 + b"]" * 1025, b"{" * 1100, b"[1,]", b"{,}", b"'single'", b"\x00",
            b"\x7f", b"\xfe"])
        return Item(b'{"execute": "query-status", "id": %s}' % field + b"\xff\n")

    def mutated(self) -> Item:
        """A read-only request with bytes flipped, dropped, repeated or inserted."""
        rng = self.rng
        data = bytearray(request(rng.choice(sorted(READ_ONLY)), None) [:-1] +
                         b', "id": "m%d"}' % rng.randrange(10**6))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            op = rng.randrange(4)
            if op == 0:
                data[at] = rng.randrange(256)
            elif op == 1:
                del data[at:at + rng.randrange(1, 8)]
            elif op == 2:
                data[at:at] = data[at:at + rng.randrange(1, 8)]
            else:
                data[at:at] = rng.choice([b"\\u0000", b"\\ud800", b"{", b"[", b'"', b"\\",
                                          b"\x00", b"\xff", b"\xc3", b"1e999", b"]"])
        return Item(bytes(data) + b"\xff\n")

    def item(self) -> Item:
        pick = self.rng.random()
        if pick < 0.40:
            return self.refused()
        if pick < 0.75:
            return self.allowed()
        return self.lexical() if pick < 0.85 else self.mutated()


def refuse_constant(constant: str) -> None:
    raise AssertionError(f"not JSON: {constant}")


def check_reply(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\r\n") and line.isascii() and line.count(b"\n") == 1, line[:200]
    reply = json.loads(line, parse_constant=refuse_constant)
    assert isinstance(reply, dict)
    if "event" in reply:
        return reply
    assert set(reply) - {"id"} in ({"return"}, {"error"}), line[:200]
    if "error" in reply:
        error = reply["error"]
        assert set(error) == {"class", "desc"} and error["class"] in CLASSES, error
        assert isinstance(error["desc"], str) and error["desc"], error
        assert "internal error" not in error["desc"], error
    elif isinstance(reply["return"], str):
        assert "internal error" not in reply["return"], reply["return"][:300]
    return reply


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=64 << 20)
        conn = cls(reader, writer)
        await conn.line()  # greeting
        writer.write(b'{"execute": "qmp_capabilities"}')
        assert check_reply(await conn.line()) == {"return": {}}
        return conn

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), TIMEOUT)

    async def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        self.writer.write(request(name, arguments, "call"))
        while "event" in (reply := check_reply(await self.line())):
            pass
        assert reply["id"] == ["call", None] and "return" in reply, reply
        return reply["return"]


async def machine_state(conn: Connection) -> tuple[Any, ...]:
    ram = await conn.call("x-emud-memory-read", {"addr": 0x80000000, "size": RAM})
    return (await conn.call("x-emud-query-registers"), await conn.call("x-emud-query-clock"),
            await conn.call("query-status"), hashlib.sha256(ram["data"].encode()).hexdigest())


async def start(tmp_path: Path) -> tuple[Process, str]:
    socket = str(tmp_path / "run" / "qmp.sock")
    (tmp_path / "run").mkdir(mode=0o700)  # an explicit socket's directory must exist
    env = os.environ | {"XDG_RUNTIME_DIR": str(tmp_path / "run"),
                        "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emud", "run", str(IMAGES / "uart_echo.elf"), "-S", "-m", "1M",
        "--qmp", f"unix:{socket}", "-serial", "ringbuf", "--snapshots",
        str(tmp_path / "store.sqlite"), cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    process = Process(proc)
    await process.read_banner(1)
    return process, socket


async def stop(process: Process, conn: Connection) -> str:
    """Quit the daemon; what it wrote to stderr meanwhile."""
    conn.writer.write(b'{"execute": "quit"}')
    assert process.proc.stderr is not None
    errors = await asyncio.wait_for(process.proc.stderr.read(), TIMEOUT)
    await asyncio.wait_for(process.proc.wait(), TIMEOUT)
    return errors.decode(errors="replace")


async def test_fuzz_qmp(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng)
    process, socket = await start(tmp_path)
    try:
        fuzz, observer = await Connection.open(socket), await Connection.open(socket)
        before = await machine_state(observer)
        started, inputs, replies = time.monotonic(), 0, 0
        for batch in range(BATCHES):
            items = [fuzzer.item() for _ in range(PER_BATCH)]
            marker = request("query-status", None, "end", batch)
            data = b"".join(item.data for item in items) + marker
            pos = 0
            while pos < len(data):  # random pieces: messages arrive split anywhere
                step = rng.choice([1, 7, 100, 4096, 65536])
                fuzz.writer.write(data[pos:pos + step])
                pos += step
            tracked = {item.key: item for item in items if item.key}
            answered: set[str] = set()
            while True:
                reply = check_reply(await fuzz.line())
                replies += 1
                ident = reply.get("id")
                if ident == ["end", batch]:
                    break
                if isinstance(ident, list) and len(ident) == 2 and ident[0] in tracked:
                    item = tracked.pop(ident[0])
                    answered.add(item.key or "")
                    assert ident[1] == item.ident, (item.data[:300], reply)
                    assert item.expect in ("any", *reply.keys()), (item.data[:300], reply)
                else:  # refused JSON (never an id), a mutated request's, or an event
                    key = ident[0] if isinstance(ident, list) and ident else None
                    assert not (isinstance(key, str) and key in answered), ("twice", reply)
            assert not tracked, [item.data[:200] for item in tracked.values()][:5]
            inputs += len(items)
            assert await machine_state(observer) == before
        elapsed = time.monotonic() - started
        every = {(name, p.name) for name, cmd in REGISTRY.qmp.items() for p in cmd.args
                 if p.kind != "/"}
        assert fuzzer.wrong_typed == every  # each argument of each command had a wrong type
        print(f"QMP fuzz: {inputs} inputs, {replies} replies in {elapsed:.1f} s")
        await oversized_and_partial(socket, observer)
        assert await machine_state(observer) == before
        stderr = await stop(process, observer)
        assert "Traceback" not in stderr and "Unhandled" not in stderr, stderr[-3000:]
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


async def oversized_and_partial(socket: str, observer: Connection) -> None:
    # A big message within the limit is answered, its id echoed whole.
    big = await Connection.open(socket)
    ident = "x" * (4 << 20)
    big.writer.write(request("query-status", None, "big", ident))
    reply = check_reply(await big.line())
    assert reply["id"] == ["big", ident]
    # A message left unfinished is answered when its last byte comes, however late.
    big.writer.write(b'{"execute": "query-st')
    await big.writer.drain()
    assert (await observer.call("query-status"))["running"] is False
    big.writer.write(b'atus", "id": "late"}')
    assert check_reply(await big.line())["id"] == "late"
    # Past the limit: one clear error, then the client is dropped; nobody else notices.
    big.writer.write(b'{"execute": "query-status", "id": "' + b"y" * (11 << 20))
    reply = check_reply(await big.line())
    assert reply == {"error": {"class": "GenericError",
                               "desc": "JSON parse error, message too long"}}
    try:
        rest = await asyncio.wait_for(big.reader.read(), TIMEOUT)
    except (ConnectionResetError, BrokenPipeError):
        # Dropped with our unread bytes in its buffer (reset), or while the rest of our
        # oversized message was still being sent (broken pipe): either way, nothing more.
        rest = b""
    assert rest == b""
    big.writer.close()
