"""The QMP wire behaviour, with qemu-system-riscv32 as the oracle.

The same raw messages go to QEMU's QMP socket and to emud's; every reply
(return, error class and text, id echo) must be the same, also for input
QEMU's JSON parser refuses (one message may then get several replies) and
for HMP errors, which human-monitor-command returns as text.  Two known
version differences are normalised: QEMU 7.2 (Debian's) offers the `oob`
capability, which emud does not, so negotiation is plain; and its
query-status still carries `singlestep`, which QEMU dropped later.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from typing import Any

from conftest import IMAGES, boot, wait_for_socket
from emud.daemon import Daemon
from emud.monitor import Monitor
from emud.monitor.qmp import QmpServer

TIMEOUT = 60.0  # a failure guard only
IMAGE = IMAGES / "uart_echo.elf"

MESSAGES = [
    b'{"execute": "query-status", "id": 1}',  # before negotiation
    b'{"execute": "qmp_capabilities", "arguments": {"foo": 1}}',
    b'{"execute": "qmp_capabilities"}',
    b'{"execute": "qmp_capabilities", "id": "again"}',
    b'{"execute": "query-status", "id": {"a": [1, null]}}',
    b'{"execute": "nope", "id": 2}',
    b"[1, 2]",
    b'{"id": 9}',
    b'{"execute": 5, "id": 10}',
    b'{"execute": "stop", "arguments": [], "id": 11}',
    b'{"execute": "stop", "bogus": 1, "id": 4}',
    b'{"execute": "human-monitor-command", "id": 5}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": 5}, "id": 6}',
    b'{"execute": "query-status", "arguments": {"x": 1}, "id": 7}',
    b'{"execute": "ringbuf-read", "arguments": {"device": "nope", "size": 4}, "id": 8}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}}',
    b'{"execute": "human-monitor-command", "arguments": {"command-line": "frob"}, "id": 13}',
    b'{"execute": "trace-event-set-state", "arguments": {"name": "nosuch", "enable": true}}',
    # What QEMU's JSON parser refuses, and how its input resumes after a lexical error.
    b'{"execute": "query-status", "id": ' + b"[" * 1023 + b"]" * 1023 + b"}",
    b'{"execute": "query-status", "id": ' + b"[" * 1024 + b"]" * 1024 + b"}",
    b'{"execute": "query-status", "id": NaN}',
    b'{"execute": "query-status", "id": "\\ud800"}',
    b'{"execute": "query-status", "id": "\\uD800\\u0041"}',
    b'{"execute": "query-status", "id": "\\udc00x"}',
    b'{"execute": "query-status", "id": "\\u12G4"}',
    b'{"execute": "query-status", "id": "\\ud83d\\ude00\\u0000\\u00e9"}',
    b'{"execute": "query-status", "id": "a\x00b"}',
    b'{"execute": "query-status", "id": "a\tb"}',
    b'{"execute": "query-status", "id": "a\\\x01b"}',
    b'{"execute": "query-status", "id": "a\xffb"}',
    b'{"execute": "query-status", "id": "a\xed\xa0\x80b"}',
    b'{"execute": "query-status", "id": "\xc3\xa9\x7f"}',
    b'{"execute": "query-status", "id": \x7f}',
    b'{"execute": "query-status", "id": "\\x"}',
    b'{"execute": "query-status" "id": 3}',
    b'{"execute": "query-status", "id": 3, "id": 4}',
    b'{"a" 1}', b'{1: 2}', b'[1 2]', b'[1,]', b'{"a":}', b'{,}', b'{"a": 1,}', b'{"a"::1}',
    b'{"a": 1]', b'[1}', b"]", b"}", b"tru", b"truex", b'{"a": tree}', b"01", b'"abc"', b"1 2",
    # HMP errors come back as the command's text.
    *(b'{"execute": "human-monitor-command", "arguments": {"command-line": "%s"}}' % line
      for line in (b"x/q 0", b"info nosuch", b"stop extra", b"p 1 +", b"x/2x", b"p $nosuch",
                   b"p (1", b"p 1/0", b"ringbuf_read nosuch 4", b"trace-event nosuch on",
                   b"help nosuch")),
    b'{"execute": "cont", "id": 15}',
    b'{"execute": "query-status", "id": 16}',
    b'{"execute": "stop", "id": 17}',
    b'{"execute": "query-status", "id": 18}',
    b'{"execute": "system_reset", "id": 19}',
]


async def exchange(path: str) -> list[list[dict[str, Any]]]:
    """Send each message; for each, what comes back (events by name only)."""
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    await asyncio.wait_for(reader.readline(), TIMEOUT)  # greeting
    transcript: list[list[dict[str, Any]]] = []
    for message in MESSAGES:  # each followed by a marker: its replies are those before
        writer.write(message + b'\n{"execute": "query-status", "id": "end"}\n')
        replies: list[dict[str, Any]] = []
        transcript.append(replies)
        while True:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if b"[" * 1000 in line:  # too deep for Python's json: the echoed id as text
                replies.append({"id": line[line.index(b'"id": '):].decode()})
                continue
            reply = json.loads(line)
            if reply.get("id") == "end":
                break
            if "event" in reply:
                replies.append({"event": reply["event"], "data": reply.get("data")})
                continue
            if isinstance(reply.get("return"), dict):
                reply["return"].pop("singlestep", None)
            replies.append(reply)
    writer.close()
    return transcript


async def test_replies_match_qemu() -> None:
    folder = tempfile.mkdtemp(prefix="emud-qmp-oracle-")
    qemu_sock, emud_sock = os.path.join(folder, "qemu.sock"), os.path.join(folder, "emud.sock")
    qemu = subprocess.Popen(
        ["qemu-system-riscv32", "-machine", "virt", "-bios", "none", "-kernel", str(IMAGE),
         "-S", "-display", "none", "-nodefaults", "-qmp", f"unix:{qemu_sock},server=on,wait=off"])
    try:
        await wait_for_socket(qemu, qemu_sock)
        expected = await exchange(qemu_sock)
    finally:
        qemu.kill()
        qemu.wait()
    daemon = Daemon(boot(IMAGE), start_paused=True, exit_on_poweroff=False)
    server = QmpServer(Monitor(daemon), f"unix:{emud_sock}")
    await server.start()
    task = asyncio.create_task(daemon.run())
    try:
        ours = await exchange(emud_sock)
    finally:
        daemon.quit()
        await asyncio.wait_for(task, TIMEOUT)
        await server.close()
    for message, want, got in zip(MESSAGES, expected, ours, strict=True):
        assert got == want, message
