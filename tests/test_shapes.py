"""emud.cpu.shapes: region sources that differ only in their literals share one compile().

The code a Shapes makes must compute what compile() of the same source does: for
real regions (a switch-heavy guest's), the same instructions on the same values;
for sources where the compiler folds a literal away, the same results (the shape
is then compiled directly).
"""

from __future__ import annotations

import dis
import types
from typing import Any

import pytest

from conftest import IMAGES
from emud.chardev import RingBackend
from emud.cpu import translate
from emud.cpu.shapes import Shapes
from emud.loader import load_elf
from emud.machine import Machine


def instructions(code: types.CodeType) -> list[tuple[str, Any]]:
    """What code does: its instructions with their argument values, nested code too."""
    found: list[tuple[str, Any]] = []
    for insn in dis.get_instructions(code):
        if isinstance(insn.argval, types.CodeType):
            found += [(insn.opname, None), *instructions(insn.argval)]
        else:
            found.append((insn.opname, insn.argval))
    return found


def region_sources(monkeypatch: pytest.MonkeyPatch, image: str, insns: int) -> list[str]:
    """The source of every region a translated run of `image` emits."""
    sources: list[str] = []
    source = translate.Emitter.source

    def keep(self: translate.Emitter, found: translate.Discovery) -> str:
        sources.append(source(self, found))
        return sources[-1]
    monkeypatch.setattr(translate.Emitter, "source", keep)
    machine = Machine(RingBackend(), accel="translate")
    machine.load(load_elf(IMAGES / image))
    machine.run_until_poweroff(max_insns=insns)
    return sources


def test_regions_of_one_shape_share_a_compile_and_do_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sources = region_sources(monkeypatch, "statemachine.elf", 3_000_000)
    shapes = Shapes()
    for n, source in enumerate(sources):
        code = shapes.compile(source, f"<region {n}>")
        assert instructions(code) == instructions(compile(source, "<direct>", "exec")), source
        assert code.co_filename == f"<region {n}>"
    assert len(sources) > 200 and shapes.compiled < len(sources) // 2


def test_a_source_unlike_any_other_is_compiled_once_directly() -> None:
    shapes = Shapes()
    shapes.compile("def region(x, r):\n    return x + 5, r\n", "<a>")
    assert shapes.compiled == 1 and not shapes.templates
    shapes.compile("def region(x, r):\n    return x - 5, r\n", "<b>")  # another family
    assert shapes.compiled == 2 and not shapes.templates


def call(code: types.CodeType, *args: int) -> Any:
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["region"](*args)


@pytest.mark.parametrize("a", [0, 5, 3, 0, 7])
def test_a_literal_the_compiler_folds_away_keeps_its_meaning(a: int) -> None:
    """`x // a if a else 7`: with a literal a, compile() keeps one arm, and a placeholder
    would keep the wrong one for a = 0, so this shape is compiled directly."""
    shapes = Shapes()
    template = "def region(x, r):\n    return (x // {a} if {a} else 7), r - {b}, x & -{c}\n"
    for first in (1, 2):  # two of the family first, so that the shape is looked at
        shapes.compile(template.format(a=first, b=first, c=first), "<first>")
    code = shapes.compile(template.format(a=a, b=a + 1, c=a + 2), "<r>")
    assert call(code, 100, 50) == ((100 // a) if a else 7, 50 - (a + 1), 100 & -(a + 2))
    assert list(shapes.templates.values()) == [None]


def test_a_negated_literal_is_substituted_with_its_sign() -> None:
    shapes = Shapes()
    template = "def region(x, r):\n    return x & -{a}, r + {b}, {{{a}: {b}, {b}: {a}}}\n"
    results = [call(shapes.compile(template.format(a=a, b=b), "<r>"), 1000, 1)
               for a, b in ((4, 9), (16, 2), (64, 3))]
    assert results == [(1000 & -4, 10, {4: 9, 9: 4}), (1000 & -16, 3, {16: 2, 2: 16}),
                       (1000 & -64, 4, {64: 3, 3: 64})]
    assert shapes.compiled == 2 and all(t is not None for t in shapes.templates.values())
