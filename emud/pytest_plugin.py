"""emud's pytest plugin (entry point `pytest11`): fixtures for firmware tests.

- `emud_machine`: a factory, ``emud_machine("fw.elf", icount=3)`` -> emud.Machine.
- `emud_daemon`: a factory that starts ``emud run IMAGE --qmp`` as a process on a
  private unix socket under the test's tmp_path and returns a connected emud.Client;
  the process is ended on teardown.

When a test that used them fails, its report gets a section per machine with the
UART output tail, the pc with its symbol and the last trap (mcause/mepc/mtval).
Nothing uses a fixed port or path, so it works under pytest-xdist (`-n auto`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from emud.api import Machine
from emud.client import Client, connect

TAIL = 400  # bytes of UART output shown in a failure report
_MACHINES = pytest.StashKey[list[tuple[str, Any]]]()


def describe(machine: Machine) -> str:
    """The failure section of one machine: UART tail, pc and symbol, last trap."""
    lines = []
    for port in machine.uarts:
        tail = port.tail()[-TAIL:].decode(errors="replace")
        lines.append(f"serial{port.index} output tail: {tail!r}")
    pc = machine.pc
    lines.append(f"pc: {pc:#010x} <{machine.symbol_at(pc) or '?'}>  icount: {machine.icount}")
    trap = machine.last_trap()
    lines.append("last trap: " + " ".join(f"{k}={v:#x}" for k, v in trap.items()))
    return "\n".join(lines)


def describe_remote(client: Client) -> str:
    r = client.command("x-emud-query-registers")
    csrs = r["csrs"]
    return (f"pc: {r['pc']:#010x}\nlast trap: mcause={csrs['mcause']:#x} "
            f"mepc={csrs['mepc']:#x} mtval={csrs['mtval']:#x}")


@contextlib.contextmanager
def start_daemon(image: str | Path, *args: str, timeout: float = 30.0) -> Iterator[Client]:
    """`emud run IMAGE --qmp unix:DIR/qmp.sock -serial ringbuf ARGS…` as a process, with
    a connected client; the process is ended (and waited for) on the way out.

    DIR is a new private (0700) directory in the system's temp directory, not the
    test's tmp_path: a unix socket path holds at most 107 bytes, and pytest's (more
    so under xdist) can be longer.  It is removed again at the end."""
    directory = Path(tempfile.mkdtemp(prefix="emud-"))
    sock = directory / "qmp.sock"
    cmd = [sys.executable, "-m", "emud", "run", str(image), "--qmp", f"unix:{sock}",
           "-serial", "ringbuf", *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()  # the first line comes once QMP listens
        if "QMP listening" not in banner:
            proc.wait(timeout)
            raise RuntimeError(f"emud run failed: {banner}{proc.stderr.read()}".strip())
        with connect(f"unix:{sock}", timeout=timeout) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def emud_machine(request: pytest.FixtureRequest) -> Generator[Callable[..., Machine]]:
    """A factory of emud.Machine: ``emud_machine(image, **options)``; closed on teardown."""
    made: list[Machine] = []

    def build(image: str | Path, **options: Any) -> Machine:
        machine = Machine(image, **options)
        made.append(machine)
        request.node.stash.setdefault(_MACHINES, []).append((str(image), machine))
        return machine

    yield build
    for machine in made:
        machine.close()


@pytest.fixture
def emud_daemon(request: pytest.FixtureRequest) -> Generator[Callable[..., Client]]:
    """A factory: ``emud_daemon(image, *emud_run_args)`` starts the daemon and returns a
    connected emud.Client; every daemon is ended on teardown."""
    with contextlib.ExitStack() as stack:
        def start(image: str | Path, *args: str) -> Client:
            client = stack.enter_context(start_daemon(image, *args))
            request.node.stash.setdefault(_MACHINES, []).append((str(image), client))
            return client

        yield start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for image, target in item.stash.get(_MACHINES, []):
        try:
            text = describe(target) if isinstance(target, Machine) else describe_remote(target)
        except Exception as e:  # the report must not hide the test's own failure
            text = f"(state unavailable: {type(e).__name__}: {e})"
        report.sections.append((f"emud {image}", text))
