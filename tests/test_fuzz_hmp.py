"""Seeded random HMP lines through `Monitor.execute_hmp`: every line gets text or a
MonitorError with a message (never another exception), and the daemon keeps serving.

Lines are built from the registry's own commands with hostile arguments: deep
nesting, numbers of thousands of digits, non-ASCII digits, lone surrogates,
huge /fmt counts, unknown flags and registers, and plain garbage.
"""

from __future__ import annotations

import asyncio
import random

from conftest import IMAGES, boot
from emud.daemon import Daemon
from emud.monitor import Monitor, MonitorError
from emud.monitor.registry import Param

SEED = 1415
LINES = 2500
TIMEOUT = 10.0
SKIP = {"quit", "q", "logfile"}  # ends the daemon under test; writes files named by its argument


def _number(rng: random.Random) -> str:
    digits = rng.choice([1, 2, 8, 16, 20, 21, 23, 40, 4301, 5000])
    body = "".join(rng.choice("0123456789abcdef") for _ in range(digits))
    return rng.choice(["", "0x", "0", "00", "0X"]) + body


def _atom(rng: random.Random, names: list[str]) -> str:
    return rng.choice([
        _number(rng), "$pc", "$a0", "$x31", "$x32", "$x" + "1" * 5000, "$x²", "$mstatus",
        "$nosuch", "$", "main", "_start", "no_such_symbol", "'a'", "'", "''", "'\\n'",
        "٣", "²", "½", rng.choice(names), "\udc80", "\x00", "𝟘", "0x", "0x" + "f" * 17,
    ])


def _expression(rng: random.Random, names: list[str], depth: int = 0) -> str:
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return _atom(rng, names)
    if roll < 0.4:
        k = rng.choice([2, 50, 99, 100, 101, 243, 244, 300, 2000])
        return "(" * k + _atom(rng, names) + ")" * rng.choice([k, k - 1, 0])
    if roll < 0.5:
        return rng.choice("-~+") * rng.choice([1, 99, 101, 1000]) + _atom(rng, names)
    op = rng.choice(["+", "-", "*", "/", "%", "&", "|", "^", " ", "**", "<<"])
    return (_expression(rng, names, depth + 1) + op + _expression(rng, names, depth + 1))


def _word(rng: random.Random, names: list[str]) -> str:
    return rng.choice([
        _expression(rng, names), '"' + "".join(rng.choice("ab\\\"n'\udc80\x00 ") for _ in range(6))
        + rng.choice(['"', ""]), "on", "off", "-a", "-v", "-z", "--", "-", "serial0", "nosuch",
        "10ms", "1e30", "1.5e400s", "3600s", "0.5s", "-5ms", "9" * 5000, "x" * 300, "*",
        "pl011_*", "\t", "diff", "export", "import", "a\udc80b", "\ud800",
    ])


def _format(rng: random.Random) -> str:
    count = rng.choice(["", "1", "4", "1000000000", "9" * 40, "9" * 5000, "٣", "-1"])
    return "/" + count + "".join(rng.choice("xudocibhwgLqz") for _ in range(rng.randint(0, 3)))


def _text(rng: random.Random) -> str:
    return "".join(rng.choice("ab\\\"n'\udc80\ud800\x00\u00e9\U0001f600*?") for _ in range(6))


def _string(rng: random.Random) -> str:
    """A word: bare, or quoted with its quotes and backslashes escaped (or not)."""
    text = _text(rng)
    if rng.random() < 0.5:
        return text.replace(" ", "")
    if rng.random() < 0.7:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text + '"'


def _argument(rng: random.Random, param: Param, names: list[str]) -> str:
    """A value of the parameter's kind, usually; hostile all the same."""
    if param.kind in ("l", "i"):
        return _expression(rng, names)
    if param.kind == "b":
        return rng.choice(["on", "off", "On", "1", _text(rng)])
    if param.kind == "flag":
        return param.flag
    if param.kind == "/":
        return ""
    return rng.choice(["serial0", "serial0", "serial1", _string(rng), _string(rng), "pl011_*"])


def random_line(rng: random.Random, monitor: Monitor, commands: list[str],
                names: list[str]) -> str:
    if rng.random() < 0.05:
        return "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 40)))
    name = rng.choice(commands)
    if rng.random() < 0.3:
        name += _format(rng)
    cmd = monitor.registry.hmp.get(name.split("/")[0])
    if cmd is not None and rng.random() < 0.6:  # shaped like the command's parameters
        words = [_argument(rng, p, names) for p in cmd.args if rng.random() < 0.9]
    else:
        words = [_word(rng, names) for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4]))]
    return " ".join([name, *words])


async def test_random_hmp_lines_only_ever_give_text_or_errors() -> None:
    rng = random.Random(SEED)
    machine = boot(IMAGES / "hello.elf")
    daemon = Daemon(machine, start_paused=True, exit_on_poweroff=False)
    monitor = Monitor(daemon)
    loop_task = asyncio.create_task(daemon.run())
    registry = monitor.registry
    commands = [n for n in registry.hmp if n not in SKIP]
    commands += [f"info {n}" for n in registry.info] + ["info", "info nosuch", "frob", ""]
    names = [*registry.hmp, *registry.info]
    outcomes = {"text": 0, "error": 0}
    try:
        for _ in range(LINES):
            line = random_line(rng, monitor, commands, names)
            try:
                text = await asyncio.wait_for(monitor.execute_hmp(line), TIMEOUT)
            except MonitorError as e:
                assert e.desc and "internal error" not in e.desc, line
                outcomes["error"] += 1
            else:
                assert isinstance(text, str)
                outcomes["text"] += 1
            assert not loop_task.done(), line
            if daemon.status == "shutdown":
                daemon.system_reset()
    finally:
        daemon.quit()
        await asyncio.wait_for(loop_task, TIMEOUT)
    assert outcomes["text"] > LINES // 20 and outcomes["error"] > LINES // 4, outcomes
