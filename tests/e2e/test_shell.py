"""`emud shell` in a real terminal (tmux), used the way the README tells a new user to.

The daemon is started with `emud run … --daemonize`; the shell runs inside a
private tmux server, keys are typed with send-keys and the screen is read
with capture-pane.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT
from emud.monitor.commands import MAX_STEP

TIMEOUT = 60.0  # a failure guard only: every wait ends on what the screen shows
EMUD = [sys.executable, "-m", "emud"]


@dataclass
class Daemon:
    qmp: str
    pid: int
    env: dict[str, str]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True


def start_daemon(image: str) -> Iterator[Daemon]:
    work = Path(tempfile.mkdtemp(prefix="emud-shell-"))
    env = dict(os.environ, XDG_STATE_HOME=str(work / "state"), PYTHONPATH=str(ROOT))
    qmp, pidfile = str(work / "qmp.sock"), work / "pid"
    started = subprocess.run(
        [*EMUD, "run", str(IMAGES / image), "--qmp", f"unix:{qmp}", "--daemonize",
         "--pidfile", str(pidfile), "-serial", "null"], env=env, capture_output=True, text=True,
        timeout=TIMEOUT)
    assert started.returncode == 0, started.stderr
    assert f"QMP listening on unix:{qmp}" in started.stderr  # the parent waits until it listens
    pid = int(pidfile.read_text())
    vm = Daemon(qmp, pid, env)
    yield vm
    if vm.alive():
        os.kill(pid, 15)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    yield from start_daemon("uart_echo.elf")


@pytest.fixture
def busy_daemon() -> Iterator[Daemon]:
    """A guest that never sleeps: run-for takes real time."""
    yield from start_daemon("counter.elf")


def shell(vm: Daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMUD, "shell", "--qmp", vm.qmp, *args], env=vm.env, input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT)


class Terminal:
    """One tmux pane running a command, on a tmux server of its own."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.server = f"emud-test-{uuid.uuid4().hex[:8]}"
        line = " ".join(shlex.quote(part) for part in command)
        # The pane stays (sleep) after the command, showing how it ended.
        self.tmux("new-session", "-d", "-x", "120", "-y", "30", "-s", "main",
                  f"{line}; echo exit status $?; sleep 60", env=env)

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], env=env, check=True,
                              capture_output=True, text=True, timeout=TIMEOUT).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "main", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "main", "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "main")

    def wait_for(self, pattern: str) -> str:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never appeared on the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for term in opened:
        term.close()


def open_shell(vm: Daemon, terminals: list[Terminal]) -> Terminal:
    term = Terminal([*EMUD, "shell", "--qmp", vm.qmp], vm.env)
    terminals.append(term)
    term.wait_for(r"monitor - type 'help' for more information")
    term.wait_for(r"\(emud\)")
    return term


def test_interactive_session(daemon: Daemon, terminals: list[Terminal]) -> None:
    term = open_shell(daemon, terminals)
    term.wait_for(r"running \| vtime \d+ ns \| pc 0x8")  # the bottom toolbar

    term.type("info sta")
    term.keys("Tab")
    term.wait_for(r"\(emud\) info status")
    term.keys("Enter")
    term.wait_for(r"VM status: running")

    term.type("stop")
    term.keys("Enter")
    term.wait_for(r"\[event\] STOP")
    term.wait_for(r"paused \| vtime")

    term.type("p/x $mis")  # register names complete after `$` ($p is no longer unique)
    term.keys("Tab")
    term.wait_for(r"\(emud\) p/x \$misa")
    term.keys("Enter")
    term.wait_for(r"\n0x40101105\s*\n")

    term.type("p marc")  # a bare name in an expression completes to the register, with `$`
    term.keys("Tab")
    term.wait_for(r"\(emud\) p \$marchid")
    term.keys("C-u")
    term.type("snapshot ")
    term.keys("Tab")
    term.wait_for(r"diff\s*\n\s*export\s*\n\s*import")
    term.keys("C-u")

    term.type("info ")
    term.keys("Tab")  # the menu shows each sub-command with its help; devices are marked
    term.wait_for(r"pl011\s+device: show the PL011")
    term.keys("C-u")

    term.type("frob")
    term.keys("Enter")
    term.wait_for(r"unknown command: 'frob'")

    # Another client resumes the VM: its event appears above this shell's prompt.
    assert shell(daemon, "-c", "cont").returncode == 0
    term.wait_for(r"\[event\] RESUME")

    term.keys("C-d")  # leaves the shell; the daemon keeps running
    term.wait_for(r"exit status 0")
    assert daemon.alive()

    # History persists: a new shell recalls the last command with Up.
    again = open_shell(daemon, terminals)
    again.keys("Up")
    again.wait_for(r"\(emud\) frob")
    again.keys("C-u")
    again.type("quit")
    again.keys("Enter")
    again.wait_for(r"The daemon has stopped")
    again.wait_for(r"exit status 0")
    deadline = time.monotonic() + TIMEOUT
    while daemon.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemon.alive()


def test_script_mode_stops_at_the_first_error(daemon: Daemon) -> None:
    ok = shell(daemon, "-c", "stop; info status; x/2i $pc")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == "VM status: paused" and re.match(r"0x8[0-9a-f]{7}:  ", lines[1])

    structured = shell(daemon, "-c", "json info status")
    assert json.loads(structured.stdout) == {"running": False, "status": "paused"}

    failed = shell(daemon, "-c", "info status; frob; info status")
    assert failed.returncode == 1
    assert failed.stdout == "VM status: paused\n"
    assert failed.stderr == "unknown command: 'frob'\n"

    piped = shell(daemon, stdin="# a comment\ncont\ninfo status\nx/q 0\ninfo status\n")
    assert piped.returncode == 1
    assert piped.stdout == "VM status: running\n"
    assert piped.stderr.startswith("invalid char in format: 'q'")

    script = Path(tempfile.mkdtemp(prefix="emud-shell-")) / "steps.txt"
    script.write_text("# stop and look\nstop\ninfo status\nfrob\ninfo status\n")
    sourced = shell(daemon, "-c", f"source {script}; info status")
    assert sourced.returncode == 1
    assert sourced.stdout == "VM status: paused\n"
    assert sourced.stderr == "unknown command: 'frob'\n"

    nowhere = subprocess.run([*EMUD, "shell", "--qmp", daemon.qmp + ".missing", "-c", "stop"],
                             env=daemon.env, capture_output=True, text=True, timeout=TIMEOUT)
    assert nowhere.returncode == 1 and "cannot connect" in nowhere.stderr


def test_daemon_vanishing_under_an_idle_prompt(daemon: Daemon,
                                              terminals: list[Terminal]) -> None:
    term = open_shell(daemon, terminals)
    os.kill(daemon.pid, 15)  # SIGTERM: the daemon announces SHUTDOWN and closes
    term.wait_for(r"\[event\] SHUTDOWN guest=False reason=host-signal")
    term.wait_for(r"The daemon has gone away")
    term.wait_for(r"exit status 1")


def test_ctrl_c_ends_a_long_run_for_and_stops_the_guest(busy_daemon: Daemon,
                                                        terminals: list[Terminal]) -> None:
    term = open_shell(busy_daemon, terminals)
    term.type("run-for 3600s")
    term.keys("Enter")
    term.wait_for(r"\[run-for\] \d+ ns of \d+ ns \(0%\), Ctrl-C stops")  # its progress
    term.keys("C-c")
    screen = term.wait_for(r"stopped at \d+ ns, before the target \d+ ns \(paused\)\n"
                           r"0x8[0-9a-f]{7}:  .*\n\(emud\)\s*\n")
    assert "Traceback" not in screen and "Error" not in screen
    term.type("info status")
    term.keys("Enter")
    term.wait_for(r"VM status: paused\n")
    assert shell(busy_daemon, "-c", "info status").stdout == "VM status: paused\n"

    # A long step ends the same way (the longest there is: minutes at any speed emud has)
    term.type(f"step {MAX_STEP}")
    term.keys("Enter")
    term.wait_for(rf"\(emud\) step {MAX_STEP}\n")
    term.keys("C-c")
    term.wait_for(rf"stopped after \d+ of {MAX_STEP} steps \(paused\)\n0x8[0-9a-f]{{7}}:  ")
    term.wait_for(r"steps \(paused\)\n.*\n\(emud\)\s*\n")
    term.keys("C-d")
    term.wait_for(r"exit status 0")
    assert busy_daemon.alive()


def test_ctrl_c_in_script_mode_stops_the_guest_and_ends_the_script(busy_daemon: Daemon) -> None:
    script = subprocess.Popen([*EMUD, "shell", "--qmp", busy_daemon.qmp, "-c",
                               "run-for 3600s; info status"], env=busy_daemon.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # until the daemon reports the run-for as pending
            clock = json.loads(shell(busy_daemon, "-c", "json info clock").stdout)
            if clock["run-for-target"] is not None:
                break
            assert time.monotonic() < deadline, "run-for never started"
        script.send_signal(2)  # SIGINT, as Ctrl-C in a terminal
        out, err = script.communicate(timeout=TIMEOUT)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert script.returncode == 130
    assert re.fullmatch(r"stopped at \d+ ns, before the target \d+ ns \(paused\)\n"
                        r"0x8[0-9a-f]{7}:  .*\n", out), out
    assert err == "Interrupted\n"  # and `info status` never ran
    assert shell(busy_daemon, "-c", "info status").stdout == "VM status: paused\n"
