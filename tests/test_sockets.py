"""Address options, sockets, host files and pidfiles, through the real `emud run` / `emud shell`.

One grammar for --gdb, --qmp and -serial; one-line errors naming the option;
private modes; a runtime directory others could reach into is refused; a
failed start leaves everything it did not create alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import IMAGES, ROOT
from emud.listen import Address, AddressError, parse_address

TIMEOUT = 60.0  # a failure guard only: a first start on a fresh machine can be slow
EMUD = [sys.executable, "-m", "emud"]


def emud(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMUD, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=env)


def must_fail(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """A start expected to fail: should it have daemonized after all, it is stopped at once."""
    for pid in re.findall(r"daemon pid (\d+)", result.stderr):
        os.kill(int(pid), 15)
    return result


_MADE: list[Path] = []


def short_tmp() -> Path:
    """A directory with a short path (a Unix socket path holds at most 107 bytes)."""
    _MADE.append(Path(tempfile.mkdtemp(prefix="emud-s-")))
    return _MADE[-1]


@pytest.fixture(autouse=True)
def _remove_tmp() -> Iterator[None]:
    yield
    while _MADE:
        shutil.rmtree(_MADE.pop(), ignore_errors=True)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- the grammar ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,address", [
    ("tcp:127.0.0.1:1234", Address("tcp", host="127.0.0.1", port=1234)),
    ("tcp::1234", Address("tcp", host="127.0.0.1", port=1234)),  # loopback by default
    ("1234", Address("tcp", host="127.0.0.1", port=1234)),
    (":1234", Address("tcp", host="127.0.0.1", port=1234)),
    ("tcp:0.0.0.0:0", Address("tcp", host="0.0.0.0", port=0)),
    ("tcp:[::1]:99", Address("tcp", host="::1", port=99)),
    ("tcp:localhost:65535", Address("tcp", host="localhost", port=65535)),
    ("unix:/tmp/gdb.sock", Address("unix", path="/tmp/gdb.sock")),
    ("unix:rel.sock", Address("unix", path="rel.sock")),
    ("/run/q.sock", Address("unix", path="/run/q.sock")),
])
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text,why", [
    ("tcp:127.0.0.1:99999", "port 99999 is out of range"),
    ("tcp:127.0.0.1:" + "9" * 5000, "is not a number in 0..65535"),  # no int() of 5000 digits
    ("tcp:host:port", "port 'port' is not a number"),
    ("tcp:1:-1", "is not a number"),
    ("tcp:", "no port"),
    ("tcp:::1:80", "IPv6 host in brackets"),
    ("unix:", "the path is empty"),
    ("unix:/" + "x" * 120, "at most 107"),
    ("unix:/tmp/a\0b", "NUL byte"),
    ("", "use unix:PATH or tcp:HOST:PORT"),
    ("localhost:1234", "use unix:PATH or tcp:HOST:PORT"),
    ("tcp:[[::1]]:80", "stray bracket"),
])
def test_parse_address_rejects(text: str, why: str) -> None:
    with pytest.raises(AddressError, match=re.escape(why)):
        parse_address(text)


@settings(derandomize=True, max_examples=3000, deadline=None, database=None)
@given(st.one_of(st.text(max_size=40),
                 st.builds("".join, st.lists(st.sampled_from(
                     ["tcp:", "unix:", ":", "[", "]", "/", "0", "65535", "99999", "::1",
                      "host", "\0", ",server", " "]), max_size=8))))
def test_parse_address_fuzz(text: str) -> None:
    """Any text parses to an address that prints and parses back the same, or is refused
    with AddressError: never another exception (OverflowError was one)."""
    try:
        address = parse_address(text)
    except AddressError as e:
        assert "\n" not in str(e)
        return
    assert address.kind in ("tcp", "unix")
    assert 0 <= address.port <= 65535
    assert parse_address(str(address)) == address


# --- every address option parses and fails the same way ------------------------------------

OPTIONS = {  # option -> how to give it an address
    "--gdb": lambda a: ["--gdb", a],
    "--qmp": lambda a: ["--qmp", a],
    "-serial": lambda a: ["-serial", a + ",server"],
}
ARGPARSE_NAME = {"--gdb": "--gdb", "--qmp": "--qmp", "-serial": "-serial/--serial"}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("bad,why", [("tcp:127.0.0.1:99999", "port 99999 is out of range"),
                                     ("tcp:127.0.0.1:x", "port 'x' is not a number"),
                                     ("unix:", "the path is empty")])
def test_bad_address_is_one_clean_line_naming_the_option(option: str, bad: str, why: str) -> None:
    result = emud("run", str(IMAGES / "hello.elf"), *OPTIONS[option](bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"emud run: error: argument {ARGPARSE_NAME[option]}: invalid address")
    assert why in last


def test_serial_socket_needs_server_mode() -> None:
    result = emud("run", str(IMAGES / "hello.elf"), "-serial", "tcp:127.0.0.1:4444")
    assert result.returncode == 2 and "only server mode is supported" in result.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("daemonize", [False, True])
@pytest.mark.parametrize("option", OPTIONS)
def test_busy_port_names_the_option_once(option: str, daemonize: bool, busy_port: int) -> None:
    address = f"tcp:127.0.0.1:{busy_port}"
    serial = [] if option == "-serial" else ["-serial", "null"]
    result = must_fail(emud("run", str(IMAGES / "hello.elf"), *serial, *OPTIONS[option](address),
                            *(["--daemonize"] if daemonize else [])))
    assert result.returncode == 1
    assert result.stderr == f"emud: {option}: cannot listen on {address}: address already in use\n"


@pytest.mark.parametrize("option", OPTIONS)
def test_an_explicit_socket_directory_is_never_created(option: str) -> None:
    missing = short_tmp() / "no" / "dir"
    result = emud("run", str(IMAGES / "hello.elf"), *OPTIONS[option](f"unix:{missing}/x.sock"),
                  *([] if option == "-serial" else ["-serial", "null"]))
    assert result.returncode == 1
    assert result.stderr == (f"emud: {option}: cannot listen on unix:{missing}/x.sock: "
                             f"directory {missing} does not exist\n")
    assert not missing.parent.exists()


# --- the runtime directory ------------------------------------------------------------------

@dataclass
class Started:
    """An `emud run --daemonize` that the test stops (SIGTERM) at teardown."""

    stderr: str
    pid: int
    pidfile: Path
    env: dict[str, str] | None = None
    stopped: bool = field(default=False)

    def stop(self) -> None:
        """SIGTERM, then wait until the daemon removed its pidfile on the way out."""
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, 15)
        deadline = time.monotonic() + TIMEOUT
        while self.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the file system: the daemon's own exit path removes it
        assert not self.pidfile.exists(), "the daemon did not remove its pidfile"


@pytest.fixture
def daemons() -> Iterator[list[Started]]:
    started: list[Started] = []
    yield started
    for one in started:
        with contextlib.suppress(AssertionError):
            one.stop()


def start(daemons: list[Started], *args: str, pidfile: Path,
          env: dict[str, str] | None = None) -> Started:
    result = emud("run", str(IMAGES / "uart_echo.elf"), "--daemonize", "--pidfile", str(pidfile),
                  *args, env=env)
    assert result.returncode == 0, result.stderr
    pid = int(re.findall(r"daemon pid (\d+)", result.stderr)[0])
    one = Started(result.stderr, pid, pidfile, env)
    daemons.append(one)
    return one


def test_default_qmp_socket_in_a_private_runtime_directory(daemons: list[Started]) -> None:
    work = short_tmp()
    runtime = work / "run"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    one = start(daemons, "--qmp", pidfile=work / "pid", env=env)
    sock = runtime / "emud" / "qmp.sock"
    assert f"QMP listening on unix:{sock}" in one.stderr
    assert mode(runtime / "emud") == 0o700 and mode(sock) == 0o600
    shell = emud("shell", "-c", "info status", env=env)  # the same default
    assert shell.returncode == 0 and shell.stdout == "VM status: running\n", shell.stderr
    one.stop()
    assert not sock.exists()


def test_the_runtime_directory_of_a_missing_xdg_is_not_created() -> None:
    missing = short_tmp() / "gone"
    result = emud("run", str(IMAGES / "hello.elf"), "--qmp", "-serial", "null",
                  env=dict(os.environ, XDG_RUNTIME_DIR=str(missing)))
    assert result.returncode == 1 and "No such file or directory" in result.stderr
    assert not missing.exists()


def unsafe(directory: Path, how: str) -> str:
    if how == "other owner":  # the test runs as root (as CI does) to give it away
        os.chown(directory, 65534, 65534)
        return "owned by uid 65534"
    directory.chmod(0o777)
    return "mode 0777 lets other users in"


@pytest.mark.parametrize("which", ["XDG_RUNTIME_DIR", "its emud directory"])
@pytest.mark.parametrize("how", ["other owner", "world-writable"])
def test_a_runtime_directory_others_control_is_refused(which: str, how: str) -> None:
    work = short_tmp()
    runtime = work / "run"
    (runtime / "emud").mkdir(parents=True, mode=0o700)
    runtime.chmod(0o700)
    bad = runtime if which == "XDG_RUNTIME_DIR" else runtime / "emud"
    # Another user's socket waits where the daemon's should be.
    with socket.socket(socket.AF_UNIX) as impostor:
        impostor.bind(str(runtime / "emud" / "qmp.sock"))
        impostor.listen()
        impostor.setblocking(False)
        why = unsafe(bad, how)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))

        shell = emud("shell", "-c", "savevm secret; info registers", env=env)
        assert shell.returncode == 1
        assert shell.stderr.startswith("emud shell: not connecting to ")
        assert f"refusing directory {bad}: {why}" in shell.stderr
        with pytest.raises(BlockingIOError):
            impostor.accept()  # the shell never connected

        daemon = emud("run", str(IMAGES / "hello.elf"), "--qmp", "-serial", "null", env=env)
        assert daemon.returncode == 1
        assert daemon.stderr.startswith("emud: --qmp: cannot listen on unix:")
        assert f"refusing directory {bad}: {why}" in daemon.stderr
        assert stat.S_ISSOCK(os.lstat(runtime / "emud" / "qmp.sock").st_mode)  # not touched


# --- private files ----------------------------------------------------------------------------

def test_everything_the_daemon_creates_is_private(daemons: list[Started]) -> None:
    work = short_tmp()
    work.chmod(0o755)
    serial_log = work / "uart.txt"
    serial_log.write_text("old")
    serial_log.chmod(0o644)
    old_umask = os.umask(0o022)  # the daemon inherits a permissive umask
    try:
        one = start(daemons, "--gdb", f"unix:{work}/gdb.sock", "--qmp", f"unix:{work}/qmp.sock",
                    pidfile=work / "pid")
        assert one.pid == int((work / "pid").read_text())
        assert mode(work / "gdb.sock") == 0o600
        assert mode(work / "qmp.sock") == 0o600
        assert mode(work / "pid") == 0o600
        one.stop()
        serial = start(daemons, "-serial", f"unix:{work}/serial.sock,server",
                       pidfile=work / "pid2")
        assert mode(work / "serial.sock") == 0o600
        serial.stop()
        result = emud("run", "-serial", f"file:{serial_log}", str(IMAGES / "hello.elf"))
        fresh = work / "fresh.txt"
        result2 = emud("run", "-serial", f"file:{fresh}", str(IMAGES / "hello.elf"))
    finally:
        os.umask(old_umask)
    assert result.returncode == 0 and result2.returncode == 0
    assert mode(serial_log) == 0o600 and "Hello" in serial_log.read_text()
    assert mode(fresh) == 0o600


def test_serial_file_is_not_written_through_a_symlink() -> None:
    work = short_tmp()
    target = work / "target.txt"
    target.write_text("keep")
    (work / "link").symlink_to(target)
    result = emud("run", "-serial", f"file:{work}/link", str(IMAGES / "hello.elf"))
    assert result.returncode == 1
    assert result.stderr == f"emud: -serial: cannot open file:{work}/link: it is a symbolic link\n"
    assert target.read_text() == "keep"


def test_shell_history_is_private(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from shell.main import open_history

    state = short_tmp() / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    old_umask = os.umask(0o022)
    try:
        history = open_history()
        assert isinstance(history, FileHistory)
        history.store_string("savevm secret")
        assert mode(state / "emud") == 0o700
        assert mode(state / "emud" / "shell_history") == 0o600
        (state / "emud" / "shell_history").chmod(0o644)  # made by an older emud
        (state / "emud").chmod(0o755)  # others may list it, not write to it: still used
        assert isinstance(open_history(), FileHistory)
        assert mode(state / "emud" / "shell_history") == 0o600
        assert capsys.readouterr().err == ""
        (state / "emud").chmod(0o757)  # others could swap the file
        assert isinstance(open_history(), InMemoryHistory)
    finally:
        os.umask(old_umask)
    assert capsys.readouterr().err == (f"emud shell: history is not saved: refusing directory "
                                       f"{state}/emud: mode 0757 lets other users in "
                                       "(chmod 700 it)\n")


# --- a second start never damages the first ------------------------------------------------

def sockets(work: Path) -> dict[str, list[str]]:
    return {"--gdb": ["--gdb", f"unix:{work}/gdb.sock"],
            "--qmp": ["--qmp", f"unix:{work}/qmp.sock"],
            "-serial": ["-serial", f"unix:{work}/serial.sock,server"]}


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def test_the_same_start_twice_leaves_the_first_intact(daemons: list[Started]) -> None:
    work = short_tmp()
    args = [arg for option in sockets(work).values() for arg in option]
    first = start(daemons, *args, pidfile=work / "pid")
    again = must_fail(emud("run", str(IMAGES / "uart_echo.elf"), "--daemonize", "--pidfile",
                           str(work / "pid"), *args))
    assert again.returncode == 1
    assert again.stderr == (f"emud: --pidfile {work}/pid: in use by running process "
                            f"{first.pid}\n")
    for name in ("gdb.sock", "qmp.sock", "serial.sock"):
        assert answers(work / name), name
    assert int((work / "pid").read_text()) == first.pid


@pytest.mark.parametrize("option", OPTIONS)
def test_a_live_socket_is_in_use_and_nothing_else_is_removed(option: str,
                                                            daemons: list[Started]) -> None:
    work, other = short_tmp(), short_tmp()
    first = start(daemons, *sockets(work)[option], pidfile=work / "pid")
    # The second daemon's other sockets are its own (created, then removed on failure).
    second_args = [arg for name, given in sockets(other).items() if name != option
                   for arg in given]
    result = must_fail(emud("run", str(IMAGES / "uart_echo.elf"), "--daemonize", "--pidfile",
                            str(other / "pid"), *sockets(work)[option], *second_args))
    assert result.returncode == 1
    path = sockets(work)[option][1].removeprefix("unix:").removesuffix(",server")
    assert result.stderr == (f"emud: {option}: cannot listen on unix:{path}: "
                             "in use by a running program\n")
    assert answers(Path(path))
    assert (work / "pid").read_text() == f"{first.pid}\n"
    assert os.listdir(other) == []  # no pidfile, no socket left behind


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("what", ["regular file", "symlink to a socket", "directory"])
def test_anything_but_a_socket_is_refused_and_kept(option: str, what: str,
                                                  daemons: list[Started]) -> None:
    work = short_tmp()
    path = work / "x.sock"
    if what == "regular file":
        path.write_text("keep me")
    elif what == "directory":
        path.mkdir()
    else:
        live = start(daemons, "--qmp", f"unix:{work}/live.sock", pidfile=work / "pid")
        path.symlink_to(work / "live.sock")
    address = f"unix:{path}"
    result = emud("run", str(IMAGES / "hello.elf"), *OPTIONS[option](address),
                  *([] if option == "-serial" else ["-serial", "null"]))
    assert result.returncode == 1
    assert result.stderr == (f"emud: {option}: cannot listen on {address}: the path exists "
                             "and is not a socket (it is left alone)\n")
    if what == "regular file":
        assert path.read_text() == "keep me"
    elif what == "directory":
        assert path.is_dir()
    else:
        assert path.is_symlink() and answers(work / "live.sock") and live.pid


@pytest.mark.parametrize("option", OPTIONS)
def test_a_stale_socket_is_replaced(option: str, daemons: list[Started]) -> None:
    work = short_tmp()
    path = work / "x.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # left by a daemon that was killed: nobody listens
    one = start(daemons, *OPTIONS[option](f"unix:{path}"), pidfile=work / "pid")
    assert answers(path)
    one.stop()
    assert not path.exists()


def test_real_gdb_over_the_private_unix_socket(daemons: list[Started]) -> None:
    work = short_tmp()
    sock = work / "gdb.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(sock))  # stale: replaced
    one = start(daemons, "--gdb", f"unix:{sock}", "-S", pidfile=work / "pid")
    assert f"gdb server listening on unix:{sock}" in one.stderr and mode(sock) == 0o600
    gdb = subprocess.run(["gdb-multiarch", "-batch", "-nx", "-ex", f"target remote {sock}",
                          "-ex", "p/x $pc", "-ex", "detach", str(IMAGES / "counter.elf")],
                         capture_output=True, text=True, timeout=TIMEOUT,
                         stdin=subprocess.DEVNULL)
    assert "$1 = 0x80000000" in gdb.stdout, gdb.stdout + gdb.stderr
    one.stop()
    assert not sock.exists()


# --- pidfile ----------------------------------------------------------------------------------

def test_a_stale_pidfile_is_replaced_and_removed_only_by_its_owner(
        daemons: list[Started]) -> None:
    work = short_tmp()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid nobody has any more
    (work / "pid").write_text(f"{dead.pid}\n")
    one = start(daemons, "--qmp", f"unix:{work}/q.sock", pidfile=work / "pid")
    assert (work / "pid").read_text() == f"{one.pid}\n"
    one.stop()  # removes it: it is its own

    two = start(daemons, "--qmp", f"unix:{work}/q.sock", pidfile=work / "pid")
    (work / "pid").write_text("someone else's\n")  # replaced behind its back
    os.kill(two.pid, 15)
    deadline = time.monotonic() + TIMEOUT
    while (work / "q.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    two.stopped = True
    assert not (work / "q.sock").exists()
    assert (work / "pid").read_text() == "someone else's\n"


def test_no_pidfile_when_the_start_fails(busy_port: int) -> None:
    work = short_tmp()
    result = must_fail(emud("run", str(IMAGES / "hello.elf"), "--gdb",
                            f"tcp:127.0.0.1:{busy_port}", "--daemonize", "--pidfile",
                            str(work / "pid")))
    assert result.returncode == 1 and "--gdb: cannot listen" in result.stderr
    assert not (work / "pid").exists()


def test_pidfile_must_be_a_regular_file() -> None:
    work = short_tmp()
    (work / "pid").mkdir()
    result = emud("run", str(IMAGES / "hello.elf"), "-serial", "null", "--pidfile",
                  str(work / "pid"))
    assert result.returncode == 1
    assert result.stderr == f"emud: --pidfile {work}/pid: not a regular file (it is left alone)\n"


# --- -S, --version, usage ---------------------------------------------------------------------

def test_paused_start_without_a_control_plane_is_refused() -> None:
    result = emud("run", str(IMAGES / "hello.elf"), "-S")
    assert result.returncode == 1
    assert result.stderr == ("emud: -S would wait forever: nothing could resume the guest "
                             "(add --gdb/-s or --qmp)\n")
    daemonized = emud("run", str(IMAGES / "hello.elf"), "-S", "--daemonize")
    assert daemonized.returncode == 1 and "-S would wait forever" in daemonized.stderr


def test_version_and_usage() -> None:
    version = emud("--version")
    assert version.returncode == 0 and re.fullmatch(r"emud \d+\.\d+\.\d+\n", version.stdout)
    usage = emud("run", "--help").stdout
    assert re.search(r"usage: emud run .*\bIMAGE\n", usage, re.S)
    assert "[IMAGE]" not in usage
    missing = emud("run")
    assert missing.returncode == 2 and "required: IMAGE" in missing.stderr
    listed = emud("run", "--trace", "help")  # still works without an image
    assert listed.returncode == 0 and "pl011_write" in listed.stdout.split()
