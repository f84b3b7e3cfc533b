"""The shell's completer over the registry's own command table (no daemon needed)."""

from __future__ import annotations

import asyncio

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from conftest import IMAGES, boot
from emud.daemon import Daemon
from emud.monitor import Monitor
from shell.completion import CompletionCache, MonitorCompleter
from shell.main import split_script


@pytest.fixture(scope="module")
def completer() -> MonitorCompleter:
    monitor = Monitor(Daemon(boot(IMAGES / "hello.elf"), start_paused=True))
    cache = CompletionCache()

    async def fetch() -> None:
        cache.load_commands(await monitor.execute_qmp("x-emud-query-hmp-commands", {}))
        cache.sets = await monitor.execute_qmp("x-emud-query-completions", {})

    asyncio.run(fetch())
    cache.sets["tags"] = ["boot", "before-irq"]
    return MonitorCompleter(cache)


def complete(completer: MonitorCompleter, text: str) -> dict[str, str]:
    found = completer.get_completions(Document(text), CompleteEvent(completion_requested=True))
    return {c.text: c.display_meta_text for c in found}


def test_command_names_with_their_help(completer: MonitorCompleter) -> None:
    found = complete(completer, "x")
    assert set(found) == {"x", "xp"}
    assert found["xp"] == "physical memory dump starting at 'addr'"
    assert {"quit", "q", "info", "run-for", "ringbuf_read"} <= set(complete(completer, ""))


def test_info_subcommands_mark_devices(completer: MonitorCompleter) -> None:
    assert set(complete(completer, "info sn")) == {"snapshots"}
    found = complete(completer, "info p")
    assert set(found) == {"pic", "pl011", "plic"}  # `info plic`: every device with an info
    assert found["pl011"].startswith("device: ") and found["plic"].startswith("device: ")
    assert not found["pic"].startswith("device: ")


def test_registers_tags_events_chardevs(completer: MonitorCompleter) -> None:
    assert set(complete(completer, "p/x $a")) == {f"$a{i}" for i in range(8)}
    assert set(complete(completer, "x/4i $pc")) == {"$pc"}
    assert set(complete(completer, "p $pmpcfg")) == {f"$pmpcfg{i}" for i in range(4)}
    assert set(complete(completer, "loadvm b")) == {"boot", "before-irq"}
    assert complete(completer, "delvm bo") == {"boot": "snapshot"}
    events = complete(completer, "trace-event pl011_")
    assert events and all(name.startswith("pl011_") for name in events)
    assert set(complete(completer, "ringbuf_read s")) == {"serial0"}
    assert set(complete(completer, "help inf")) == {"info"}


def test_snapshot_actions_then_tags(completer: MonitorCompleter) -> None:
    assert complete(completer, "snapshot ") == {"diff": "", "export": "", "import": ""}
    assert set(complete(completer, "snapshot e")) == {"export"}
    assert complete(completer, "snapshot diff b") == {"boot": "snapshot",
                                                      "before-irq": "snapshot"}


def test_expressions_complete_registers_with_their_dollar_and_symbols(
        completer: MonitorCompleter) -> None:
    found = complete(completer, "p ma")
    assert found["$marchid"] == "register" and found["main"] == "symbol"
    assert "marchid" not in found and all(t.startswith(("$", "ma")) for t in found)
    found = completer.get_completions(Document("p/x 4+ma"), CompleteEvent())
    assert {(c.text, c.start_position) for c in found} >= {("$marchid", -2), ("main", -2)}
    assert "_start" in complete(completer, "x/4i _st")  # x's address is an expression
    assert "$mepc" in complete(completer, "write 0x80000000 $mep")  # every word of write
    assert set(complete(completer, "write 0 1 mepc")) == {"$mepc"}
    assert set(complete(completer, "ringbuf_read s")) == {"serial0"}
    assert "$sp" in complete(completer, "ringbuf_read serial0 s")
    assert complete(completer, "trace-event pl011_read ma") == {}  # on|off: not an expression


def test_script_splitting_respects_quotes() -> None:
    assert split_script('stop; ringbuf_write serial0 "a;b" ;; info status') == [
        "stop", 'ringbuf_write serial0 "a;b"', "info status"]
