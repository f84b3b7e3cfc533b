"""A client for a running emud daemon (`emud run --qmp …`), on qemu.qmp.

``emud.connect(address)`` returns a `Client` shaped like `emud.Machine` where a socket
allows it: ``regs``, ``pc``, ``read``/``write``, ``run(ns=…)``, ``stop``/``cont``,
``save``/``load`` (savevm/loadvm), ``uart.read()`` (a ringbuf serial) and ``close``.
It is synchronous: each call runs qemu.qmp in the client's own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

from qemu.qmp import QMPClient, QMPError
from qemu.qmp.error import QMPError as _BaseQMPError

from emud.api import ByName, EmudError, Registers

__all__ = ["Client", "connect", "ClientError"]


class ClientError(EmudError):
    """The daemon refused a command or cannot be reached; the message is its reason."""


def qmp_address(address: str | tuple[str, int]) -> str | tuple[str, int]:
    """What qemu.qmp connects to: "unix:PATH" or a path, "tcp:HOST:PORT" or (host, port)."""
    if isinstance(address, tuple):
        return address
    if address.startswith("unix:"):
        return address[5:]
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        if not host or not port.isdigit():
            raise ClientError(f"invalid QMP address {address!r} (use tcp:HOST:PORT)")
        return (host.strip("[]"), int(port))
    return address


class _Regs(ByName):
    """Registers of the daemon's hart by ABI name, xN or pc (read only)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __getitem__(self, name: str) -> int:
        n = Registers.index(name)
        r = self._client.command("x-emud-query-registers")
        return int(r["pc"] if n is None else r["gpr"][n])


class _Csrs(ByName):
    def __init__(self, client: Client) -> None:
        self._client = client

    def __getitem__(self, name: str) -> int:
        reply = self._client.command("human-monitor-command",
                                     **{"command-line": f"print/x ${name.lower()}"})
        text = str(reply).strip()
        if not text.startswith("0x"):
            raise KeyError(f"unknown CSR {name!r}")
        return int(text, 16)


class _RemoteUart:
    """A ringbuf serial of the daemon (`-serial ringbuf`): read and write through QMP."""

    def __init__(self, client: Client, device: str) -> None:
        self._client = client
        self.device = device

    def read(self, size: int = 65536) -> bytes:
        data = self._client.command("ringbuf-read", device=self.device, size=size,
                                    format="base64")
        return base64.b64decode(str(data))

    def write(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._client.command("ringbuf-write", device=self.device,
                             data=base64.b64encode(raw).decode(), format="base64")


class Client:
    """A connection to a daemon's QMP socket; a context manager that closes it."""

    def __init__(self, address: str | tuple[str, int], *, timeout: float = 30.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._qmp = QMPClient("emud.client")
        self.timeout = timeout  # a safety net for a daemon that stopped answering
        try:
            self._sync(self._qmp.connect(qmp_address(address)))
        except (TimeoutError, OSError, _BaseQMPError) as e:
            self._loop.close()
            raise ClientError(f"cannot connect to QMP at {address}: {e}") from None
        self.regs = _Regs(self)
        self.csr = _Csrs(self)
        self.uart = _RemoteUart(self, "serial0")

    def _sync(self, coro: Any) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, self.timeout))

    def command(self, name: str, **args: Any) -> Any:
        """Any QMP command; a refusal raises ClientError with the daemon's message."""
        try:
            return self._sync(self._qmp.execute(name, args or None))
        except QMPError as e:
            raise ClientError(f"{name}: {e}") from None

    def hmp(self, line: str) -> str:
        """An HMP command line (human-monitor-command); its output text."""
        return str(self.command("human-monitor-command", **{"command-line": line}))

    @property
    def pc(self) -> int:
        return self.regs["pc"]

    def status(self) -> str:
        """QMP's run state: "running", "paused", "shutdown", "debug"..."""
        return str(self.command("query-status")["status"])

    def read(self, addr: int, size: int) -> bytes:
        return bytes.fromhex(self.command("x-emud-memory-read", addr=addr, size=size)["data"])

    def write(self, addr: int, data: bytes) -> None:
        self.command("x-emud-memory-write", addr=addr, data=data.hex())

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def stop(self) -> None:
        self.command("stop")

    def cont(self) -> None:
        self.command("cont")

    def run(self, *, ns: int) -> bool:
        """Run for `ns` of virtual time, then pause; False if something paused it first."""
        return bool(self.command("x-emud-run-for", duration=f"{ns}ns")["completed"])

    def _hmp_checked(self, line: str) -> None:
        text = self.hmp(line).strip()
        if text:  # HMP prints nothing on success
            raise ClientError(text.splitlines()[0])

    def save(self, tag: str) -> None:
        """savevm `tag` in the daemon's snapshot store."""
        self._hmp_checked(f"savevm {tag}")

    def load(self, tag: str) -> None:
        self._hmp_checked(f"loadvm {tag}")

    def quit(self) -> None:
        """End the daemon."""
        with contextlib.suppress(ClientError):  # it may close the socket before answering
            self.command("quit")

    def close(self) -> None:
        if not self._loop.is_closed():
            with contextlib.suppress(TimeoutError, OSError, _BaseQMPError):
                self._sync(self._qmp.disconnect())
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str | tuple[str, int], *, timeout: float = 30.0) -> Client:
    """A `Client` for the daemon whose QMP listens at `address`."""
    return Client(address, timeout=timeout)
