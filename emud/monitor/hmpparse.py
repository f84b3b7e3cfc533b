"""HMP argument syntax, as QEMU's monitor parses it: words, `/fmt`, on|off, expressions.

Pure functions over a `Cursor` (the text and a position), so every rule can be
tested on its own.  Errors are `ParseError` with QEMU's wording.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from emud.monitor.errors import MonitorError

MASK64 = (1 << 64) - 1
FORMAT_LETTERS = "oxudci"
SIZE_LETTERS = {"b": 1, "h": 2, "w": 4, "g": 8, "L": 8}


class ParseError(MonitorError):
    """Bad command-line syntax; HMP adds a pointer to the command's help."""


@dataclass
class Cursor:
    text: str
    pos: int = 0

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def rest(self) -> str:
        self.skip_space()
        rest = self.text[self.pos :].rstrip()
        self.pos = len(self.text)
        return rest


# --- words --------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "\\": "\\", "'": "'", '"': '"'}


def word(cur: Cursor) -> str:
    """A word, or a "quoted string" with \\n \\r \\\\ \\' \\" escapes."""
    cur.skip_space()
    if cur.peek() != '"':
        start = cur.pos
        while cur.pos < len(cur.text) and not cur.text[cur.pos].isspace():
            cur.pos += 1
        return cur.text[start : cur.pos]
    cur.pos += 1
    out: list[str] = []
    while True:
        ch = cur.peek()
        if not ch:
            raise ParseError("unterminated string")
        cur.pos += 1
        if ch == '"':
            return "".join(out)
        if ch == "\\":
            esc = cur.peek()
            if esc not in _ESCAPES:
                raise ParseError(f"unsupported escape code: '\\{esc}'")
            cur.pos += 1
            ch = _ESCAPES[esc]
        out.append(ch)


def split_words(text: str) -> list[str]:
    """The words of a line with HMP's quoting (completion uses this)."""
    cur = Cursor(text)
    words = []
    while not cur.at_end():
        words.append(word(cur))
    return words


# --- /fmt -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    count: int = 1
    letter: str = "x"
    size: int = 4  # bytes per item; ignored for 'i'


def parse_format(cur: Cursor, sticky: Format) -> Format:
    """`/{count}{format}{size}`; omitted parts reuse the last ones given (QEMU's rule).

    The caller makes the result the new sticky format, even if the command then fails.
    """
    if cur.peek() != "/":
        return Format(1, sticky.letter, sticky.size)
    cur.pos += 1
    start = cur.pos
    while cur.peek() in _DIGITS:
        cur.pos += 1
    digits = cur.text[start : cur.pos].lstrip("0") or "0"
    # More items than anyone can dump; the commands cap what they show (and say so).
    count = int(digits) if len(digits) <= 18 else 10**18
    count = count if cur.pos > start else 1
    letter: str | None = None
    size: int | None = None
    while True:
        ch = cur.peek()
        if ch and ch in FORMAT_LETTERS:
            letter = ch
        elif ch and ch in SIZE_LETTERS:
            size = SIZE_LETTERS[ch]
        else:
            break
        cur.pos += 1
    if cur.peek() and not cur.peek().isspace():
        raise ParseError(f"invalid char in format: '{cur.peek()}'")
    return Format(count, letter or sticky.letter, size or sticky.size)


# --- expressions ----------------------------------------------------------------------

Lookup = Callable[[str], int]  # name -> value; raises MonitorError when unknown


MAX_NESTING = 100  # parentheses and unary operators inside one another (QEMU: the C stack)
# The most digits (leading zeros aside) a 64-bit number has in each base.
_MAX_DIGITS = {16: 16, 10: 20, 8: 22}
_DIGITS = frozenset(string.digits)  # ASCII only: str.isdigit() also accepts '²' and '٣'


class _Expr:
    """QEMU's monitor expression grammar, plus ELF symbol names."""

    def __init__(self, cur: Cursor, register: Lookup, symbol: Lookup) -> None:
        self.cur = cur
        self.register = register
        self.symbol = symbol
        self.depth = 0

    def _nested(self) -> int:
        """unary() one level down; deep nesting is an error, not a Python RecursionError."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ParseError(f"expression nested too deeply (at most {MAX_NESTING} levels)")
        try:
            return self.unary()
        finally:
            self.depth -= 1

    def _next_op(self, ops: str) -> str | None:
        """Consume the next operator in `ops` (after blanks); otherwise leave the cursor."""
        start = self.cur.pos
        self.cur.skip_space()
        ch = self.cur.peek()
        if ch and ch in ops:
            self.cur.pos += 1
            return ch
        self.cur.pos = start
        return None

    def sum(self) -> int:
        value = self.prod()
        while op := self._next_op("+-"):
            rhs = self.prod()
            value = value + rhs if op == "+" else value - rhs
        return value

    def prod(self) -> int:
        value = self.logic()
        while op := self._next_op("*/%"):
            rhs = self.logic()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ParseError("division by zero")
            else:  # C semantics: truncate toward zero
                quotient = abs(value) // abs(rhs) * (1 if (value < 0) == (rhs < 0) else -1)
                value = quotient if op == "/" else value - rhs * quotient
        return value

    def logic(self) -> int:
        value = self.unary()
        while op := self._next_op("&|^"):
            rhs = self.unary()
            value = value & rhs if op == "&" else value | rhs if op == "|" else value ^ rhs
        return value

    def unary(self) -> int:
        cur = self.cur
        cur.skip_space()
        ch = cur.peek()
        if ch in ("+", "-", "~"):
            cur.pos += 1
            value = self._nested()
            return value if ch == "+" else -value if ch == "-" else ~value
        if ch == "(":
            cur.pos += 1
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ParseError(f"expression nested too deeply (at most {MAX_NESTING} levels)")
            value = self.sum()
            self.depth -= 1
            if self._next_op(")") is None:
                raise ParseError("')' expected")
            return value
        if ch == "'":
            if cur.pos + 2 >= len(cur.text) or cur.text[cur.pos + 2] != "'":
                raise ParseError("missing terminating ' character")
            value = ord(cur.text[cur.pos + 1])
            cur.pos += 3
            return value
        if not ch:
            raise ParseError("unexpected end of expression")
        if ch == "$":
            cur.pos += 1
            return self.register(self._name())
        if ch in _DIGITS:
            return self._number()
        if ch.isalpha() or ch in "_.":
            return self.symbol(self._name())
        raise ParseError(f"invalid char '{ch}' in expression")

    def _name(self) -> str:
        cur = self.cur
        start = cur.pos
        while cur.peek() and (cur.peek().isalnum() or cur.peek() in "_."):
            cur.pos += 1
        return cur.text[start : cur.pos]

    def _number(self) -> int:
        """C's strtoull(base 0): the longest valid prefix; what follows is left for the caller."""
        cur = self.cur
        text = cur.text
        if text[cur.pos : cur.pos + 2].lower() == "0x" and text[cur.pos + 2 : cur.pos + 3] and \
                text[cur.pos + 2] in string.hexdigits:
            cur.pos += 2
            base, digits = 16, string.hexdigits
        elif text[cur.pos] == "0":
            base, digits = 8, string.octdigits
        else:
            base, digits = 10, string.digits
        start = cur.pos
        while cur.peek() and cur.peek() in digits:
            cur.pos += 1
        significant = text[start : cur.pos].lstrip("0") or "0"
        if len(significant) > _MAX_DIGITS[base] or int(significant, base) > MASK64:
            raise ParseError("number too large")  # strtoull's ERANGE, as QEMU reports it
        return int(significant, base)


def expression(cur: Cursor, register: Lookup, symbol: Lookup) -> int:
    """One expression; the value as a 64-bit two's complement pattern (like QEMU's int64)."""
    return _Expr(cur, register, symbol).sum() & MASK64


# --- duration (run-for) ---------------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION = re.compile(r"(\d{1,20})(?:\.(\d{0,20}))?(ns|us|ms|s)?")
MAX_DURATION_NS = 3600 * 1_000_000_000  # an hour of virtual time; `cont` runs longer


def parse_duration(text: str) -> int:
    """'10ms', '5us', '1000ns', '0.5s' or a bare number of ns -> ns (virtual time).

    Plain decimals only (no exponents, inf or nan), rounded to whole ns, between
    1 ns and MAX_DURATION_NS."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise MonitorError(f"invalid duration '{text}' (e.g. 10ms, 5us, 1000ns, 2s)")
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3) or "ns"
    scale = _UNITS[unit]
    ns = int(whole) * scale + round(Fraction(int(fraction or "0"), 10 ** len(fraction)) * scale)
    if ns <= 0:
        raise MonitorError(f"duration must be positive, not '{text}'")
    if ns > MAX_DURATION_NS:
        raise MonitorError(f"duration '{text}' is too long: run-for takes at most 3600s "
                           "of virtual time (use cont to run longer)")
    return ns
