"""compile() once per shape: many region sources differ only in their integer literals.

A switch-heavy guest makes hundreds of regions whose sources repeat a few
patterns with other pcs, offsets and constants: statemachine.elf's 391 regions
have 74 shapes.  compile() is most of what translating a region costs, so a
`Shapes` compiles a shape once, with each literal replaced by a placeholder (a
distinct large int), and makes each region's code object from that template by
putting the region's own numbers where the placeholders are among the constants
(`CodeType.replace`).

The code object computes exactly what compile() of the source would.  It may
differ in the layout of its constants (compile() merges equal ones), in the
column table (where a traceback points) and where compile() folded constants
(`5 << 3`), which the template computes instead.  That holds only if every
placeholder is still loaded as a constant of its own: where the compiler folded
one away (`288 - 2147483636`, `x if 5 else y`), the shape is compiled directly
every time instead.

Finding a source's shape takes a regular expression over it, about a quarter of
what compiling it costs, so it is done only for sources whose *family* (the text
with its digits deleted, register numbers included: one fast `str.translate`)
was seen before.  A guest whose regions are all different pays only that.
"""

from __future__ import annotations

import opcode
import re
import types

# A decimal literal, not part of a name (region sources hold no floats, so no "1.5").
LITERAL = re.compile(r"\b([0-9]+)")  # \b: a fifth faster to split by than a lookbehind
NO_DIGITS = str.maketrans("", "", "0123456789")
PLACEHOLDER = 10 ** 12  # placeholder k is PLACEHOLDER + k: unlike any value a region holds
MAX_SHAPES = 4096  # shapes and families kept; past this, start again
LOADS_CONST = frozenset(opcode.hasconst)
EXTENDED_ARG = opcode.opmap["EXTENDED_ARG"]


class Shapes:
    """compile(source, filename, "exec") for region sources, once per shape."""

    def __init__(self) -> None:
        self.families: set[str] = set()
        self.templates: dict[str, types.CodeType | None] = {}  # None: compile directly
        self.compiled = 0  # compile() calls made, templates and direct

    def compile(self, source: str, filename: str) -> types.CodeType:
        family = source.translate(NO_DIGITS)
        if family not in self.families:  # the first of its kind: nothing to share yet
            if len(self.families) >= MAX_SHAPES:
                self.families.clear()
            self.families.add(family)
            return self._direct(source, filename)
        parts = LITERAL.split(source)
        shape = "\0".join(parts[0::2])
        if shape in self.templates:
            template = self.templates[shape]
        else:
            if len(self.templates) >= MAX_SHAPES:
                self.templates.clear()
            template = self.templates[shape] = self._template(parts)
        if template is None:
            return self._direct(source, filename)
        values = {PLACEHOLDER + k: int(n) for k, n in enumerate(parts[1::2])}
        return _substitute(template, values, filename)

    def _direct(self, source: str, filename: str) -> types.CodeType:
        self.compiled += 1
        return compile(source, filename, "exec")

    def _template(self, parts: list[str]) -> types.CodeType | None:
        """The shape compiled with placeholders, or None unless each of them is loaded
        as a constant of its own."""
        count = len(parts) // 2
        source = list(parts)
        source[1::2] = [str(PLACEHOLDER + k) for k in range(count)]
        code = self._direct("".join(source), "<shape>")
        loaded = {abs(c) for c in _loaded_ints(code)}
        return code if loaded == set(range(PLACEHOLDER, PLACEHOLDER + count)) else None


def _loaded_ints(code: types.CodeType) -> set[int]:
    """The ints that code, and the code nested in it, loads as constants (a tuple's
    among them; bools aside).  Not co_consts as such: a constant that folding made
    unused may stay there."""
    found: set[int] = set()
    raw, consts, ext = code.co_code, code.co_consts, 0
    for op, arg in zip(raw[0::2], raw[1::2], strict=True):  # 2-byte code units
        if op == EXTENDED_ARG:
            ext = (ext | arg) << 8
            continue
        if op in LOADS_CONST:
            c = consts[ext | arg]
            if isinstance(c, types.CodeType):
                found |= _loaded_ints(c)
            elif isinstance(c, tuple):
                found |= {e for e in c if type(e) is int}
            elif type(c) is int:
                found.add(c)
        ext = 0
    return found


def _substitute(code: types.CodeType, values: dict[int, int], filename: str) -> types.CodeType:
    """code with each placeholder constant (or its negation) replaced by its value."""
    consts: list[object] = []
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            c = _substitute(c, values, filename)
        elif isinstance(c, tuple):
            c = tuple(_value(e, values) if type(e) is int else e for e in c)
        elif type(c) is int:
            c = _value(c, values)
        consts.append(c)
    return code.replace(co_consts=tuple(consts), co_filename=filename)


def _value(c: int, values: dict[int, int]) -> int:
    """A placeholder's value (negated for a negated one); any other int stays."""
    if c < 0:
        return -values.get(-c, -c)
    return values.get(c, c)
