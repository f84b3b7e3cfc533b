"""The pytest plugin, run as a user's suite would run it (pytester), also under xdist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IMAGES, ROOT

pytest_plugins = ["pytester"]

SUITE = f'''
import pytest

IMAGES = {str(IMAGES)!r}

def test_machine(emud_machine):
    m = emud_machine(IMAGES + "/hello.elf")
    assert m.run().exit_code == 0

@pytest.mark.parametrize("n", range(3))
def test_daemon(emud_daemon, n):
    client = emud_daemon(IMAGES + "/counter.elf", "-S")
    assert client.run(ns=50_000 * (n + 1))

def test_fails_inside_main(emud_machine):
    m = emud_machine(IMAGES + "/traps.elf")
    m.uart.expect("ecall: mcause=11")
    assert False, "on purpose"
'''


@pytest.mark.parametrize("args", [["-p", "no:xdist"], ["-n", "2"]], ids=["serial", "xdist"])
def test_plugin_fixtures_and_failure_report(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(test_fw=SUITE)
    result = pytester.runpytest_subprocess("-p", "emud.pytest_plugin", *args)
    result.assert_outcomes(passed=4, failed=1)
    out = result.stdout.str()
    # The failing test's report shows the machine: UART tail, pc with symbol, last trap.
    assert "emud " in out and "traps.elf" in out
    result.stdout.re_match_lines([r".*serial0 output tail: '.*ecall: mcause=11.*",
                                  r"pc: 0x[0-9a-f]{8} <uart_\w+\+0x[0-9a-f]+>  icount: \d+",
                                  r"last trap: mcause=0xb mepc=0x[0-9a-f]+ mtval=0x0"])


def test_the_example_firmware_suite_passes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:xdist", str(ROOT / "examples" /
                                                                  "firmware-tests"))
    result.assert_outcomes(passed=5)


def test_api_reference_builds_with_pdoc(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pdoc", "-o", str(tmp_path), "emud.api",
                    "emud.client", "emud.pytest_plugin"], check=True, cwd=ROOT,
                   capture_output=True)
    page = (tmp_path / "emud" / "api.html").read_text()
    for name in ("Machine", "Machine.run", "Uart.expect", "Machine.save", "Machine.serving",
                 "EmudError", "Stop.reason"):
        assert f'id="{name}"' in page, name
    assert "Run until a limit, a target" in page  # the docstrings are the text
    assert "connect" in (tmp_path / "emud" / "client.html").read_text()
