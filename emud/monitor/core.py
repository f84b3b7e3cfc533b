"""The Monitor: one session's view of the registry (sticky /fmt) over a running Daemon."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Protocol

from emud.chardev import CharBackend
from emud.cpu.csr import Csr
from emud.cpu.disasm import ABI_NAMES, CSR_NAMES
from emud.monitor.errors import MonitorError, internal_error
from emud.monitor.hmpparse import Format, ParseError
from emud.monitor.registry import ArgContext, Command, check_qmp_args, parse_hmp_args

if TYPE_CHECKING:
    from emud.daemon import Daemon

REG_ALIASES = {"fp": 8} | {f"x{i}": i for i in range(32)}
# Longer HMP lines are refused before parsing: an expression of megabytes would hold the
# loop for seconds (QEMU's own HMP line editor stops at 4 KiB).
MAX_LINE = 65536
CSR_BY_NAME = {name: num for num, name in CSR_NAMES.items()} | {c.name.lower(): c for c in Csr}


class SnapshotHook(Protocol):
    """What savevm/loadvm/delvm/info snapshots need; the snapshot issue provides it.

    `list` returns dicts with id, tag, vm-state-size, date-sec, vm-clock-nsec
    and icount (None when not recorded).  Errors are MonitorError.
    """

    def save(self, tag: str) -> Any: ...
    def load(self, tag: str) -> Any: ...
    def delete(self, tag: str) -> Any: ...
    def list(self) -> list[dict[str, Any]]: ...


class Monitor(ArgContext):
    """See the package docstring.  `fork()` gives a new session sharing everything else."""

    def __init__(self, daemon: Daemon, snapshots: SnapshotHook | None = None, *,
                 shared_door: bool = False) -> None:
        """`snapshots` defaults to `daemon.snapshots`, looked up at each use.
        `shared_door`: reached through a door other local users can reach (TCP)."""
        from emud.monitor.commands import machine_registry

        self.daemon = daemon
        self.machine = daemon.machine
        self._snapshots = snapshots
        self.shared_door = shared_door
        self.registry = machine_registry(self.machine)
        self.fmt = Format()

    def fork(self) -> Monitor:
        session = object.__new__(Monitor)
        session.__dict__.update(self.__dict__)
        session.fmt = Format()
        return session

    @property
    def snapshots(self) -> SnapshotHook | None:
        return self._snapshots if self._snapshots is not None else self.daemon.snapshots

    @property
    def chardevs(self) -> dict[str, CharBackend]:
        return {f"serial{n}": serial for n, serial in enumerate(self.machine.serials)}

    # --- argument lookups -----------------------------------------------------------

    def register_value(self, name: str) -> int:
        hart = self.machine.hart
        lname = name.lower()
        if lname == "pc":
            return hart.pc
        if lname in REG_ALIASES:
            return hart.x[REG_ALIASES[lname]]
        if lname in ABI_NAMES:
            return hart.x[ABI_NAMES.index(lname)]
        if lname in CSR_BY_NAME:
            return hart.csr_read(CSR_BY_NAME[lname], 0)
        raise ParseError("unknown register")

    def symbol_value(self, name: str) -> int:
        image = self.machine.image
        if image is not None and name in image.symbols:
            return image.symbols[name]
        raise ParseError(f"unknown symbol '{name}'")

    # --- the doors ------------------------------------------------------------------

    def _resolve_hmp(self, line: str) -> tuple[Command, str, str]:
        """(command, the name as typed, the rest of the line)."""
        if len(line) > MAX_LINE:
            raise MonitorError(f"command line too long ({len(line)} characters; "
                               f"HMP takes at most {MAX_LINE})")
        text = line.strip()
        end = 0
        while end < len(text) and not text[end].isspace() and text[end] != "/":
            end += 1
        name, rest = text[:end], text[end:]
        if name == "info" and rest.strip():
            sub, _, rest = rest.strip().partition(" ")
            if sub not in self.registry.info:
                raise MonitorError(f"unknown command: 'info {sub}'", plain=True)
            return self.registry.info[sub], f"info {sub}", rest
        if name not in self.registry.hmp:
            raise MonitorError(f"unknown command: '{name}'", plain=True)
        return self.registry.hmp[name], name, rest

    def _bind(self, line: str) -> tuple[Command, dict[str, Any]]:
        cmd, typed, rest = self._resolve_hmp(line)
        try:
            return cmd, parse_hmp_args(cmd, rest, self)
        except ParseError as e:
            raise ParseError(f'{e.desc}\nTry "help {typed}" for more information') from None

    async def execute_hmp(self, line: str) -> str:
        """Run one HMP line; returns its text (lines end in \\n).  Raises MonitorError."""
        if not line.strip():
            return ""
        cmd, args = self._bind(line)
        return _lines(cmd.render(await self._run(cmd, args)))

    async def execute_hmp_structured(self, line: str) -> Any:
        """Run one HMP line; returns the structured result the text is rendered from."""
        cmd, args = self._bind(line)
        result = await self._run(cmd, args)
        if isinstance(result, bytes):
            return result.decode("utf-8", errors="replace")
        return {} if result is None else result

    async def _run(self, cmd: Command, args: dict[str, Any]) -> Any:
        result = cmd.handler(self, **args)
        if inspect.isawaitable(result):
            result = await result
        return result

    def execute_hmp_now(self, line: str) -> str:
        """execute_hmp for synchronous callers (gdb's `monitor`).  Commands that must
        wait for the guest or yield to the loop (run-for, step) are refused instead of
        blocking it."""
        if not line.strip():
            return ""
        cmd, args = self._bind(line)
        if inspect.iscoroutinefunction(cmd.handler):
            raise MonitorError(f"'{cmd.name}' waits for the guest and is not available here")
        return _lines(cmd.render(cmd.handler(self, **args)))

    async def human_monitor_command(self, line: str) -> str:
        """QEMU's semantics: errors come back as text, never as an exception."""
        try:
            return await self.execute_hmp(line)
        except MonitorError as e:
            return hmp_error_text(e)
        except Exception as e:  # a bug is an error too, and HMP shows every error as text
            return hmp_error_text(internal_error(line.split(maxsplit=1)[0], e))

    async def execute_qmp(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run one QMP command by name; returns its JSON-able result. Raises MonitorError."""
        cmd = self.registry.qmp.get(name)
        if cmd is None:
            raise MonitorError(f"The command {name} has not been found", "CommandNotFound")
        result = cmd.handler(self, **check_qmp_args(cmd, arguments))
        if inspect.isawaitable(result):
            result = await result
        return {} if result is None else result


def _lines(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def hmp_error_text(e: MonitorError) -> str:
    """How HMP shows an error: parse errors and unknown commands bare, others `Error: …`."""
    return e.desc + "\n" if e.plain or isinstance(e, ParseError) else f"Error: {e.desc}\n"
