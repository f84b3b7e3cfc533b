"""The command registry: one table behind HMP text, QMP and gdb's `monitor`.

A command is a handler returning structured data (dicts, lists, ints,
strings) plus a renderer that turns that data into HMP text.  Its arguments
are declared once, in a QEMU-like `args_type` string, and drive both the HMP
parser and the QMP argument checks:

    "addr:l,value:l,size:i?"   name:kind, `?` = optional
    kinds: s word (or "quoted"), S rest of line, l expression (64-bit),
           i expression that must fit 32 bits, b on|off, / /fmt (HMP only),
           -x a flag `-x` (a bool, HMP), e.g. "all:-a"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from emud.monitor.errors import MonitorError
from emud.monitor.hmpparse import Cursor, Format, ParseError, expression, parse_format, word

Handler = Callable[..., Any]  # (Monitor, **arguments) -> result or awaitable result
Renderer = Callable[[Any], str]
H = TypeVar("H", bound=Handler)

_QMP_TYPES: dict[str, tuple[type, str]] = {
    "s": (str, "string"), "S": (str, "string"), "l": (int, "integer"),
    "i": (int, "integer"), "b": (bool, "boolean"), "flag": (bool, "boolean"),
}  # fmt: skip


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # s S l i b / or "flag"
    optional: bool
    flag: str = ""  # "-a" for kind "flag"


def parse_args_type(spec: str) -> tuple[Param, ...]:
    params = []
    for item in filter(None, spec.split(",")):
        name, kind = item.split(":")
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        if kind.startswith("-"):
            params.append(Param(name, "flag", True, kind))
        else:
            params.append(Param(name, kind, optional))
    return tuple(params)


def _default_render(result: Any) -> str:
    if result is None or result == {}:
        return ""
    return str(result)


@dataclass
class Command:
    name: str  # HMP spelling ("stop", "registers" in the info table) or the QMP name
    handler: Handler
    args: tuple[Param, ...] = ()
    params: str = ""  # for `help`
    help: str = ""
    aliases: tuple[str, ...] = ()
    render: Renderer = _default_render
    # What the words after the name complete to, one hint per word: a set the shell
    # fetches (tags, events, chardevs, devices, commands, info), "expression" (registers
    # as $name, ELF symbols), literal choices "a|b|c", or "-" for nothing.
    complete: str = ""
    details: tuple[str, ...] = ()  # more lines for `help NAME` (QEMU's one line comes first)

    @property
    def spelling(self) -> str:
        return "|".join((self.name, *self.aliases))


def _complete_hints(params: tuple[Param, ...]) -> str:
    """Completion by parameter kind: expressions where the command takes one."""
    hints = ["expression" if p.kind in ("l", "i") else "-"
             for p in params if p.kind not in ("/", "flag")]
    return " ".join(hints).rstrip(" -")


@dataclass
class Registry:
    hmp: dict[str, Command] = field(default_factory=dict)  # name and aliases
    info: dict[str, Command] = field(default_factory=dict)  # `info` sub-commands
    qmp: dict[str, Command] = field(default_factory=dict)

    def command(self, spelling: str = "", *, args: str = "", params: str = "", help: str = "",
                qmp: str = "", info: str = "", render: Renderer | None = None,
                complete: str = "", details: tuple[str, ...] = ()) -> Callable[[H], H]:
        """Register a handler under an HMP name (`name|alias`), an `info` name and/or QMP."""

        def register(handler: H) -> H:
            names = spelling.split("|") if spelling else [info or qmp]
            arg_params = parse_args_type(args)
            cmd = Command(names[0], handler, arg_params, params, help, tuple(names[1:]),
                          render or _default_render, complete or _complete_hints(arg_params),
                          details)
            if info:
                self.info[info] = cmd
            elif spelling:
                for name in names:
                    self.hmp[name] = cmd
            if qmp:
                self.qmp[qmp] = cmd
            return handler

        return register

    def copy(self) -> Registry:
        return Registry(dict(self.hmp), dict(self.info), dict(self.qmp))

    def hmp_commands(self) -> list[Command]:
        """Each HMP command once, in registration order."""
        return list({id(c): c for c in self.hmp.values()}.values())


# --- argument binding -----------------------------------------------------------------


class ArgContext:
    """What argument parsing needs from a monitor: registers, symbols, sticky /fmt."""

    fmt: Format

    def register_value(self, name: str) -> int:
        raise NotImplementedError

    def symbol_value(self, name: str) -> int:
        raise NotImplementedError


def parse_hmp_args(cmd: Command, text: str, ctx: ArgContext) -> dict[str, Any]:
    """Bind the text after the command name to the command's parameters (QEMU's rules)."""
    cur = Cursor(text)
    values: dict[str, Any] = {}
    flags = {p.flag: p for p in cmd.args if p.kind == "flag"}
    positional = [p for p in cmd.args if p.kind != "flag"]
    while flags and not cur.at_end() and cur.peek() == "-" and cur.text[cur.pos + 1:cur.pos + 2]:
        if not cur.text[cur.pos + 1].isalpha():
            break
        flag = word(cur)
        if flag not in flags:
            raise ParseError(f"{cmd.spelling}: unsupported option {flag}")
        values[flags[flag].name] = True
    for param in positional:
        if param.kind == "/":
            cur.skip_space()
            values[param.name] = ctx.fmt = parse_format(cur, ctx.fmt)
            continue
        if cur.at_end():
            if param.optional:
                continue
            if param.kind in ("l", "i"):
                raise ParseError("unexpected end of expression")
            raise ParseError(f"{cmd.name}: string expected")
        if param.kind == "S":
            values[param.name] = cur.rest()
        elif param.kind in ("l", "i"):
            value = expression(cur, ctx.register_value, ctx.symbol_value)
            if param.kind == "i" and value >= 1 << 32 and value < (1 << 64) - (1 << 31):
                raise ParseError(f"'{cmd.name}' has failed: integer is for 32-bit values")
            values[param.name] = value
        elif param.kind == "b":
            text = word(cur)
            if text not in ("on", "off"):
                raise ParseError("Expected 'on' or 'off'")
            values[param.name] = text == "on"
        else:
            values[param.name] = word(cur)
    if not cur.at_end():
        raise ParseError(f"{cmd.spelling}: extraneous characters at the end of line")
    return values


def check_qmp_args(cmd: Command, arguments: dict[str, Any]) -> dict[str, Any]:
    """QMP argument checks, all before the command runs (QEMU's messages)."""
    by_name = {p.name: p for p in cmd.args}
    for name in arguments:
        if name not in by_name or by_name[name].kind == "/":
            raise MonitorError(f"Parameter '{name}' is unexpected")
    values: dict[str, Any] = {}
    for param in cmd.args:
        if param.name not in arguments:
            if not param.optional and param.kind != "/":
                raise MonitorError(f"Parameter '{param.name}' is missing")
            continue
        value = arguments[param.name]
        expected, type_name = _QMP_TYPES[param.kind]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise MonitorError(f"Invalid parameter type for '{param.name}', expected: {type_name}")
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(1 << 63) <= value < 1 << 64:
                raise MonitorError(f"Parameter '{param.name}' expects an integer in 64 bits")
            value &= (1 << 64) - 1
        values[param.name] = value
    return values
