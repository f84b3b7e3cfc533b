"""Checks of the guest images in images/, written against emud's public API."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import emud


def test_hello_greets_and_exits_cleanly(emud_machine: Callable[..., emud.Machine],
                                        image: Path) -> None:
    m = emud_machine(image / "hello.elf")
    m.uart.expect("Hello from emud!")
    assert m.run().exit_code == 0


def test_every_trap_is_reported(emud_machine: Callable[..., emud.Machine],
                                image: Path) -> None:
    m = emud_machine(image / "traps.elf", icount=3)
    m.uart.expect("traps: all ok", timeout_ns=10**9)


def test_echo_answers_input(emud_machine: Callable[..., emud.Machine], image: Path) -> None:
    m = emud_machine(image / "uart_echo.elf")
    m.uart.expect("ready")
    m.uart.write("ping\r")
    assert m.uart.expect(re.compile(rb"p\w*g")).group() == b"ping"


def test_counter_resumes_from_a_snapshot(emud_machine: Callable[..., emud.Machine],
                                         image: Path) -> None:
    m = emud_machine(image / "counter.elf")
    m.run(until="bump")
    start = m.save()
    m.run(instructions=10_000)
    after = m.read_u32("counter")
    m.load(start)
    m.run(instructions=10_000)
    assert m.read_u32("counter") == after


def test_daemon_counts_while_running(emud_daemon: Callable[..., emud.Client],
                                     image: Path) -> None:
    client = emud_daemon(image / "counter.elf", "-S")
    assert client.run(ns=100_000)
    assert client.uart.read().count(b".") >= 1
