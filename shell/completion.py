"""Tab completion for monitor lines, from a cache the shell refreshes after each command.

No network round trip per keystroke: the command table is fetched once, the
dynamic sets (snapshot tags, trace events, chardevs, devices) after every command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document


@dataclass
class CompletionCache:
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)  # name/alias -> entry
    info: dict[str, dict[str, Any]] = field(default_factory=dict)  # info sub-commands
    sets: dict[str, list[str]] = field(default_factory=dict)  # devices, registers, tags, …

    def load_commands(self, entries: list[dict[str, Any]]) -> None:
        self.commands.clear()
        self.info.clear()
        for entry in entries:
            name: str = entry["name"]
            if name.startswith("info "):
                self.info[name[5:]] = entry
            else:
                for spelling in (name, *entry["aliases"]):
                    self.commands[spelling] = entry


def _matches(word: str, candidates: Iterable[tuple[str, str]]) -> Iterator[Completion]:
    for text, meta in sorted(set(candidates)):
        if text.startswith(word):
            yield Completion(text, start_position=-len(word), display_meta=meta)


class MonitorCompleter(Completer):
    def __init__(self, cache: CompletionCache) -> None:
        self.cache = cache

    def get_completions(self, document: Document,
                        complete_event: CompleteEvent) -> Iterator[Completion]:
        before = document.text_before_cursor
        if before.startswith("json "):  # `json CMD` completes like CMD
            before = before[5:]
        words = before.split()
        if not before.strip() or (len(words) == 1 and not before[-1].isspace()):
            word = words[0] if words else ""
            yield from _matches(word, ((name, entry["help"])
                                       for name, entry in self.cache.commands.items()))
            yield from _matches(word, [("json", "print the structured result of a command"),
                                       ("source", "run the monitor commands in a file"),
                                       ("exit", "leave the shell (the daemon keeps running)")])
            return
        word = "" if before[-1].isspace() else words[-1]
        position = len(words) - (0 if before[-1].isspace() else 1)  # index of the current word
        name = words[0].split("/")[0]
        if word.startswith("$"):  # a register, wherever it is typed
            yield from self._expression(word)
            return
        if position == 1 and name == "info":
            devices = set(self.cache.sets.get("devices", []))
            yield from _matches(word, ((sub, ("device: " if sub in devices else "") + e["help"])
                                       for sub, e in self.cache.info.items()))
        elif position == 1 and name in ("help", "?"):
            yield from _matches(word, ((c, e["help"]) for c, e in self.cache.commands.items()))
        elif name in self.cache.commands:
            hint = word_hint(self.cache.commands[name]["complete"], position)
            if hint == "expression":
                yield from self._expression(word)
            elif "|" in hint:
                yield from _matches(word, ((choice, "") for choice in hint.split("|")))
            else:
                yield from _matches(word, ((c, SET_META.get(hint, ""))
                                           for c in self.cache.sets.get(hint, [])))

    def _expression(self, word: str) -> Iterator[Completion]:
        """The name being typed at the end of an expression: `$reg`, or a bare prefix that
        becomes a register (with its `$`) or an ELF symbol."""
        token = NAME_AT_END.search(word)
        typed = token.group(0) if token else ""
        bare = typed.removeprefix("$")
        sets = self.cache.sets
        found = {("$" + r, "register") for r in sets.get("registers", []) if r.startswith(bare)}
        if not typed.startswith("$"):
            found |= {(s, "symbol") for s in sets.get("symbols", []) if s.startswith(typed)}
        for text, meta in sorted(found):
            yield Completion(text, start_position=-len(typed), display_meta=meta)


SET_META = {"tags": "snapshot", "events": "trace event", "chardevs": "chardev",
            "devices": "device"}
NAME_AT_END = re.compile(r"\$?[A-Za-z0-9_.]*$")


def word_hint(complete: str, position: int) -> str:
    """The hint for word `position` (1 = the first after the name); an expression hint
    also covers the words after it, so `write a b c` completes everywhere."""
    hints = complete.split()
    if position - 1 < len(hints):
        return hints[position - 1]
    return "expression" if hints and hints[-1] == "expression" else ""
