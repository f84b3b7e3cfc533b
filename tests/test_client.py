"""emud.connect: the client of a running `emud run` process, over its QMP socket."""

from __future__ import annotations

from pathlib import Path

import pytest

import emud
from conftest import IMAGES
from emud.loader import load_elf
from emud.pytest_plugin import start_daemon

COUNTER = load_elf(IMAGES / "counter.elf").symbols["counter"]


def test_client_drives_a_daemon_process(tmp_path: Path) -> None:
    with start_daemon(IMAGES / "counter.elf", "-S", "--icount", "shift=1",
                      "--snapshots", str(tmp_path / "s.sqlite")) as client:
        assert client.status() == "prelaunch"
        assert client.run(ns=200_000)
        assert client.status() == "paused"
        count = client.read_u32(COUNTER)
        assert count > 0
        assert client.regs.pc == client.pc and client.regs["sp"] == client.regs.x2
        assert client.csr.mstatus == client.csr["mstatus"]
        assert client.uart.read().count(b".") == count // 1000
        client.save("mid")
        client.run(ns=200_000)
        assert client.read_u32(COUNTER) > count
        client.load("mid")
        assert client.read_u32(COUNTER) == count
        client.uart.write(b"ignored")  # counter reads no input: this only checks the path
        with pytest.raises(emud.EmudError, match="loadvm|absent"):
            client.load("absent")
        client.write(COUNTER, b"\0\0\0\0")
        assert client.read_u32(COUNTER) == 0
        with pytest.raises(emud.EmudError, match="x-emud-memory-read: Cannot access memory"):
            client.read(4, 4)


def test_connecting_to_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(emud.EmudError, match="cannot connect to QMP at unix:"):
        emud.connect(f"unix:{tmp_path}/none.sock", timeout=5)
    with pytest.raises(emud.EmudError, match="invalid QMP address"):
        emud.connect("tcp:nohost")
