"""`emud shell`: the monitor over QMP, interactive (prompt_toolkit) or as a script.

Interactive when stdin and stdout are a terminal and no `-c` was given: completion,
persistent history, a bottom toolbar (run state, virtual time, pc) and QMP
events printed above the prompt.  Otherwise every line (or `;`-separated
command of `-c`) runs in order and the first failure ends the shell with
status 1.  `exit` or Ctrl-D leaves the shell; `quit` stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emud.hostfiles import UnsafePathError, check_private_dir, open_private, private_umask
from shell.completion import CompletionCache, MonitorCompleter
from shell.qmpclient import Disconnected, QmpConnection, QmpError

if TYPE_CHECKING:
    from prompt_toolkit.history import History

PROMPT = "(emud) "


def history_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "emud" / "shell_history"


def open_history() -> History:
    """The persistent history: a 0600 file in a directory only the user can write to.

    A missing directory is created 0700.  An existing one (an older emud made it
    0755) is used if it is the user's and nobody else can write to it, since
    then nobody else can swap the file; otherwise the shell says so and keeps
    its history in memory.
    """
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = history_path()
    try:
        with private_umask():
            path.parent.mkdir(parents=True, exist_ok=True)
        check_private_dir(path.parent, forbidden=0o022)
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    except OSError as e:
        print(f"emud shell: history is not saved: {e}", file=sys.stderr)
        return InMemoryHistory()
    return FileHistory(str(path))


def split_script(text: str) -> list[str]:
    """`-c` text: commands separated by `;` outside double quotes."""
    commands: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            commands.append("".join(current))
            current = []
        else:
            current.append(ch)
    commands.append("".join(current))
    return [c.strip() for c in commands if c.strip()]


def error_text(e: QmpError) -> str:
    # Parse errors and unknown commands read as HMP prints them; the rest get `Error:`.
    if e.desc.startswith("unknown command") or '\nTry "help' in e.desc:
        return e.desc
    return f"Error: {e.desc}"


def format_event(event: dict[str, Any]) -> str:
    data = event.get("data")
    details = " ".join(f"{k}={v}" for k, v in data.items()) if data else ""
    return f"[event] {event['event']} {details}".rstrip()


class Shell:
    def __init__(self, address: str, private_dirs: Sequence[str] = ()) -> None:
        self.address = address
        self.private_dirs = private_dirs  # checked before connecting (emud.hostfiles)
        self.qmp = QmpConnection(self.on_event)
        self.cache = CompletionCache()
        self.status: dict[str, Any] = {}
        self.interactive = False
        # A second connection for what must not queue behind a running command (the
        # daemon runs one client's commands in order): Ctrl-C's `stop`, progress, toolbar.
        self.control = QmpConnection()
        self.command: asyncio.Task[str] | None = None  # the line the daemon is running
        self.interrupts = 0
        self.progress_shown = False

    def on_event(self, event: dict[str, Any]) -> None:
        if self.interactive:
            self._clear_progress()
            print(format_event(event))  # above the prompt, through patch_stdout
        if event["event"] in ("STOP", "RESUME", "RESET", "SHUTDOWN"):
            self.status["state"] = event["event"]

    async def run_line(self, line: str) -> str:
        """Run one monitor line on the daemon; returns its output.  Raises QmpError.

        `json CMD` prints the structured result behind CMD's text instead;
        `source FILE` runs FILE's lines, stopping at the first error.
        """
        if line.startswith("source "):
            await self.source(line[7:].strip())
            return ""
        if line.startswith("json "):
            result = await self.qmp.execute("x-emud-hmp-json", {"command-line": line[5:]})
            return json.dumps(result, indent=2) + "\n"
        text: str = await self.qmp.execute("x-emud-hmp", {"command-line": line})
        return text

    async def source(self, path: str) -> None:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise QmpError("GenericError", f"cannot read {path}: {e}") from None
        for line in lines:
            if line.strip() and not line.lstrip().startswith("#"):
                print(await self.run_line(line.strip()), end="", flush=True)

    async def run_script(self, commands: list[str]) -> int:
        for line in commands:
            if line.startswith("#"):
                continue
            if line == "exit":
                return 0
            try:
                sys.stdout.write(await self.run_command(line))
                if self.interrupts:  # Ctrl-C stopped the guest: the script ends here
                    print("Interrupted", file=sys.stderr)
                    return 130
            except asyncio.CancelledError:
                print("Interrupted", file=sys.stderr)
                return 130
            except QmpError as e:
                sys.stdout.flush()
                print(error_text(e), file=sys.stderr)
                return 1
            except Disconnected as e:
                if line in ("quit", "q"):
                    return 0
                print(f"emud shell: {e}", file=sys.stderr)
                return 1
        return 0

    # --- a command the daemon is running: Ctrl-C and progress ----------------------------

    async def run_command(self, line: str) -> str:
        """run_line with Ctrl-C: the first stops the guest (as gdb's Ctrl-C does), which
        ends run-for and step early with where they stopped; a second stops waiting
        (CancelledError).  A long command shows its progress on its line."""
        loop = asyncio.get_running_loop()
        self.command = asyncio.create_task(self.run_line(line))
        self.interrupts = 0
        progress = asyncio.create_task(self._progress())
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        try:
            return await self.command
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            self.command = None

    def _on_sigint(self) -> None:
        self.interrupts += 1
        if self.command is None:
            return
        if self.interrupts == 1:
            asyncio.get_running_loop().create_task(self._stop_guest())
        else:
            self.command.cancel()

    async def _control(self) -> QmpConnection:
        if not self.control.connected:
            await self.control.connect(self.address)
        return self.control

    async def _stop_guest(self) -> None:
        try:
            await (await self._control()).execute("stop")
        except (OSError, QmpError, Disconnected, ValueError):
            if self.command is not None:
                self.command.cancel()  # nobody to ask: at least stop waiting

    async def _progress(self) -> None:
        """While a run-for runs: `[run-for] N ns of TARGET ns (P%)` on the command's line."""
        out = sys.__stdout__
        if out is None or not out.isatty():
            return
        try:
            await asyncio.sleep(0.5)
            while True:
                clock = await (await self._control()).execute("x-emud-query-clock")
                target = clock.get("run-for-target")
                if target:
                    percent = 100 * clock["ns"] // target if target else 0
                    out.write(f"\r[run-for] {clock['ns']} ns of {target} ns ({percent}%), "
                              "Ctrl-C stops\x1b[K")
                    out.flush()
                    self.progress_shown = True
                await asyncio.sleep(0.5)
        except (OSError, QmpError, Disconnected, ValueError):
            pass
        finally:
            self._clear_progress()

    def _clear_progress(self) -> None:
        """Erase the progress line (and a ^C the terminal echoed) before other output."""
        if self.progress_shown and sys.__stdout__ is not None:
            sys.__stdout__.write("\r\x1b[K")
            sys.__stdout__.flush()
        self.progress_shown = False

    # --- interactive ---------------------------------------------------------------------

    async def refresh(self) -> None:
        """Completion sets and toolbar state (cheap queries, one round trip each, on the
        control connection so they never wait behind a command)."""
        qmp = await self._control()
        self.cache.sets = await qmp.execute("x-emud-query-completions")
        status = await qmp.execute("query-status")
        clock = await qmp.execute("x-emud-query-clock")
        regs = await qmp.execute("x-emud-query-registers")
        self.status = {"state": status["status"], "ns": clock["ns"], "pc": regs["pc"],
                       "target": clock.get("run-for-target")}

    def toolbar(self) -> str:
        if not self.qmp.connected:
            return " disconnected "
        s = self.status
        if "pc" not in s:
            return f" {self.address} "
        vtime = f"vtime {s['ns']} ns" + (f" of {s['target']} (run-for)" if s["target"] else "")
        return (f" {s['state']} | {vtime} | pc 0x{s['pc']:08x} | {self.address} "
                f"| Tab: complete, Ctrl-D: leave (daemon keeps running)")

    async def _poll(self) -> None:
        while self.qmp.connected:
            try:
                await self.refresh()
            except (QmpError, OSError, ValueError):
                pass  # try again at the next tick
            except Disconnected:
                if not self.qmp.connected:
                    return
            await asyncio.sleep(0.5)

    async def interact(self) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.auto_suggest import AutoSuggestFromHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession(
            history=open_history(), completer=MonitorCompleter(self.cache),
            complete_while_typing=False, auto_suggest=AutoSuggestFromHistory(),
            bottom_toolbar=self.toolbar, refresh_interval=0.5)
        self.interactive = True
        package = self.qmp.greeting.get("QMP", {}).get("version", {}).get("package", "emud")
        print(f"{package} monitor - type 'help' for more information")
        print("Ctrl-D or 'exit' leaves the shell; 'quit' stops the daemon.")
        poll = asyncio.create_task(self._poll())

        def gone(_: object) -> None:  # the daemon went away while we sat at the prompt
            if session.app.is_running:
                session.app.exit(exception=Disconnected("gone"))

        self.qmp.closed.add_done_callback(gone)
        try:
            with patch_stdout(raw=True):
                while True:
                    try:
                        line = (await session.prompt_async(PROMPT)).strip()
                    except KeyboardInterrupt:
                        continue
                    except EOFError:
                        return 0
                    except Disconnected:
                        print("The daemon has gone away.")
                        return 1
                    if line == "exit":
                        return 0
                    if not line:
                        continue
                    quitting = line in ("quit", "q")
                    try:
                        print(await self.run_command(line), end="")
                        if quitting:
                            await asyncio.wait_for(asyncio.shield(self.qmp.closed), 10)
                    except QmpError as e:
                        print(error_text(e))
                    except asyncio.CancelledError:
                        print("Interrupted (the daemon may still finish the command)")
                    except (TimeoutError, Disconnected):
                        pass
                    if not self.qmp.connected:
                        print("The daemon has stopped." if quitting else
                              "The daemon has gone away.")
                        return 0 if quitting else 1
        finally:
            poll.cancel()

    async def main(self, script: str | None) -> int:
        try:
            for directory in self.private_dirs:  # or another user's socket could answer
                check_private_dir(directory)
        except UnsafePathError as e:
            print(f"emud shell: not connecting to {self.address}: {e}", file=sys.stderr)
            return 1
        try:
            await self.qmp.connect(self.address)
        except (OSError, Disconnected, ValueError) as e:
            print(f"emud shell: cannot connect to {self.address}: {e}", file=sys.stderr)
            return 1
        try:
            if script is not None:
                return await self.run_script(split_script(script))
            if not (sys.stdin.isatty() and sys.stdout.isatty()):  # pipes: plain line mode
                return await self.run_script([line.strip() for line in sys.stdin])
            self.cache.load_commands(await self.qmp.execute("x-emud-query-hmp-commands"))
            with contextlib.suppress(QmpError):  # the toolbar can wait for the next poll
                await self.refresh()
            return await self.interact()
        finally:
            await self.qmp.close()
            if self.control.connected:
                await self.control.close()


def run_shell(address: str, script: str | None = None, private_dirs: Sequence[str] = ()) -> int:
    """`private_dirs`: directories that must be the user's alone before `address` is trusted."""
    return asyncio.run(Shell(address, private_dirs).main(script))
