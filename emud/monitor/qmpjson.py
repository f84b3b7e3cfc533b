"""QMP's JSON input, cut and decoded by the rules of QEMU's JSON parser.

QEMU reads QMP as a byte stream that a lexer cuts into tokens; a message
ends when its brackets balance, and is then parsed.  What this module
copies of that behaviour (the messages are QEMU's):

- a byte that cannot start or continue a token is an error ("stray '…'")
  that drops the message so far; the bytes after it are skipped up to the
  next structural character or control character, where input resumes;
- strings may not hold raw control characters; escapes are JSON's plus
  `\\'`; a `\\u` escape must be a Unicode scalar value (a surrogate only as
  a correct pair); bytes must be UTF-8;
- at most 1024 nested brackets and 2 Mi tokens per message;
- keywords are `true`, `false`, `null` (no NaN or Infinity).

emud's own choices, where QEMU's parser is looser: a number must be finite
as a double (QEMU turns `1e999` into an infinity and then writes `inf`, which
is not JSON), integers stay exact (QEMU rounds those beyond 64 bits to
doubles), and strings are strict UTF-8 (QEMU also takes the overlong `C0 80`
for U+0000).  Nothing here recurses, so no input can exhaust Python's stack.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 1024  # QEMU's limits per message
MAX_TOKENS = 2 << 20

_WHITE = frozenset(b" \t\r\n")
# Structural characters as tokens: shared one-character strings (cheap in long messages).
_STRUCTURAL = {ord(c): c for c in "{}[]:,"}
# The rest of a string: any byte but a quote, a backslash or one QEMU's lexer refuses
# (control characters, 0xFE, 0xFF), or a backslash and a byte it accepts.
_STRING_BODY = re.compile(rb'(?:[^"\\\x00-\x1f\xfe\xff]|\\[^\x00-\x1f\xfe\xff])*')
# Numbers and keywords are first taken as runs of the bytes they may hold, then checked.
_NUMBER_RUN = re.compile(rb"[-+.eE0-9]*")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_KEYWORD_RUN = re.compile(rb"[a-z]*")
# Where skipping after a lexical error stops: what may start a fresh message.
_RESYNC = re.compile(rb"[{}\[\]:,\x00-\x08\x0a-\x1f\xfe\xff]")
_KEYWORDS = {"true": True, "false": False, "null": None}
_SURROGATE = re.compile("[\ud800-\udfff]")
# Text whose escapes are all JSON's and whose \\u escapes are scalar values or pairs.
_GOOD_ESCAPES = re.compile(r"""(?:[^\\]+|\\["\\/bfnrt]
    |\\u(?![dD][89a-fA-F])[0-9a-fA-F]{4}
    |\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})*""", re.VERBOSE)

# A token: a structural character (str), or the bytes of a string, number or keyword.
Token = str | bytes


@dataclass(frozen=True)
class JsonError:
    """A message that could not be read; `desc` is the QMP error text."""

    desc: str


class ParseError(Exception):
    pass


class JsonStreamer:
    """Feed bytes, get back each complete top-level value or a JsonError, in order.

    Tokens go to the parser as they come (a long message costs no pause at its
    end); a parse error is reported when the message's brackets balance, as
    QEMU does, so the rest of a broken message never counts as new input.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.scanned = 0  # how much of an incomplete token at the buffer's start is checked
        self._reset()
        self.recovering = False

    @property
    def pending(self) -> int:
        """Bytes held for a message not yet complete."""
        return self.size + len(self.buffer)

    def feed(self, data: bytes) -> list[Any]:
        self.buffer += data
        buf, pos, out = self.buffer, 0, []
        while pos < len(buf):
            if self.recovering:
                m = _RESYNC.search(buf, pos)
                if m is None:
                    pos = len(buf)
                    break
                pos, self.recovering = m.start(), False
            if buf[pos] in _WHITE:
                pos += 1
                continue
            end, valid = lex(buf, pos, self.scanned)
            self.scanned = 0
            if end < 0:  # the token may go on in the next read; -end bytes are checked
                self.scanned = -end
                break
            if valid:
                done = self._push(_STRUCTURAL.get(buf[pos]) or bytes(buf[pos:end]))
                if done is not None:
                    out.append(done)
            else:
                out.append(self._stray(bytes(buf[pos:end])))
            pos = end
        del buf[:pos]
        return out

    def _stray(self, text: bytes) -> JsonError:
        self._reset()
        self.recovering = True
        shown = text.split(b"\0")[0].decode("utf-8", "replace")
        return JsonError(f"JSON parse error, stray '{shown}'")

    def _reset(self) -> None:
        self.parser = Parser()
        self.error: ParseError | None = None
        self.count = self.size = 0  # tokens and bytes in this message
        self.braces = self.brackets = 0

    def _push(self, token: Token) -> Any:
        """The message's value or JsonError once `token` completes it, else None."""
        if isinstance(token, str):
            self.braces += (token == "{") - (token == "}")
            self.brackets += (token == "[") - (token == "]")
        self.count += 1
        self.size += len(token)
        if self.braces + self.brackets > MAX_NESTING:
            self._reset()
            return JsonError("JSON nesting depth limit exceeded")
        if self.count > MAX_TOKENS:
            self._reset()
            return JsonError("JSON token count limit exceeded")
        if self.error is None:
            try:
                self.parser.push(token)
            except ParseError as e:
                self.error = e
        if (self.braces > 0 or self.brackets > 0) and self.braces >= 0 and self.brackets >= 0:
            return None
        parser, error = self.parser, self.error
        self._reset()
        if error is None and not parser.done:
            error = ParseError("expecting value")
        return JsonError(f"JSON parse error, {error}") if error else parser.value


def lex(buf: bytearray, pos: int, scanned: int = 0) -> tuple[int, bool]:
    """(end, valid) of the token at pos.  An invalid one ends with the byte refused.
    A token that reaches the end of buf may go on: then end is minus the bytes
    checked so far, and the next call with more data passes them as `scanned`."""
    ch = buf[pos]
    if ch in _STRUCTURAL:
        return pos + 1, True
    if ch == 0x22:
        m = _STRING_BODY.match(buf, pos + max(scanned, 1))
        assert m is not None
        end = m.end()
        if end == len(buf) or (end == len(buf) - 1 and buf[end] == 0x5C):
            return -(end - pos), False
        if buf[end] == 0x5C:  # an escape of a byte refused: both belong to the error
            return end + 2, False
        return end + 1, buf[end] == 0x22
    run = _NUMBER_RUN if ch == 0x2D or 0x30 <= ch <= 0x39 else _KEYWORD_RUN
    m = run.match(buf, pos + scanned)
    assert m is not None
    end = m.end()
    if end == pos:  # no token starts with this byte
        return pos + 1, False
    if end == len(buf):
        return -(end - pos), False
    return end, run is _KEYWORD_RUN or _NUMBER.fullmatch(buf, pos, end) is not None


class Parser:
    """Builds one value from its tokens, one `push` at a time, without recursion."""

    def __init__(self) -> None:
        # Each open container: [container, key awaiting its value, state], where state
        # says what may come next: "first" (after the opening bracket), "item" (after a
        # comma), "colon" (after a key), "value" (after the colon) or "sep".
        self.stack: list[list[Any]] = []
        self.done = False
        self.value: Any = None

    def push(self, token: Token) -> None:
        stack = self.stack
        top = stack[-1] if stack else None
        state = top[2] if top is not None else None
        is_dict = top is not None and isinstance(top[0], dict)
        close = "}" if is_dict else "]"
        if top is not None and state == "colon":
            if token != ":":
                raise ParseError("missing : in object pair")
            top[2] = "value"
            return
        if top is not None and state == "sep":
            if token == ",":
                top[2] = "item"
                return
            if token != close:
                raise ParseError(f"expected separator in {'dict' if is_dict else 'list'}")
            stack.pop()
            value = top[0]
        elif top is not None and state == "first" and token == close:
            stack.pop()
            value = top[0]
        elif top is not None and is_dict and state in ("first", "item"):
            if not (isinstance(token, bytes) and token[:1] == b'"'):
                starts_value = isinstance(token, bytes) or token in "{["
                raise ParseError("key is not a string in object" if starts_value and
                                 state == "first" else "expecting value")
            key = decode_string(token)
            if key in top[0]:
                raise ParseError("duplicate key")
            top[1], top[2] = key, "colon"
            return
        elif token in ("{", "["):
            stack.append([{} if token == "{" else [], None, "first"])
            return
        else:
            value = scalar(token)
        # A value is complete: it is the result, or goes into its container.
        if not stack:
            self.done, self.value = True, value
            return
        top = stack[-1]
        if isinstance(top[0], dict):
            top[0][top[1]] = value
        else:
            top[0].append(value)
        top[2] = "sep"


def scalar(token: Token) -> Any:
    if isinstance(token, str):
        raise ParseError("expecting value")
    if token[:1] == b'"':
        return decode_string(token)
    text = token.decode("ascii")
    if text[0] == "-" or text[0].isdigit():
        return decode_number(text)
    if text not in _KEYWORDS:
        raise ParseError(f"invalid keyword '{text}'")
    return _KEYWORDS[text]


def decode_number(text: str) -> int | float:
    """A JSON number that fits a double; integers stay exact."""
    value = float(text)  # no digit limit, unlike int(): gives inf when far too big
    if not math.isfinite(value):
        raise ParseError(f"number {text[:40]} is out of range")
    return value if any(c in text for c in ".eE") else int(text)


def decode_string(raw: bytes) -> str:
    """The text of a string token (quotes included), escapes resolved."""
    try:
        text = raw[1:-1].decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("invalid UTF-8 sequence in string") from None
    if "\\" not in text:
        return text
    try:  # the C decoder, for speed; it also takes lone surrogates and refuses \'
        decoded: str = json.loads(f'"{text}"')
    except ValueError:
        return _decode_escapes(text)
    return _decode_escapes(text) if _SURROGATE.search(decoded) else decoded


def _decode_escapes(text: str) -> str:
    """Runs of JSON's own escapes by the C decoder, the others one by one."""
    out, pos = [], 0
    while True:
        end = _GOOD_ESCAPES.match(text, pos).end()  # type: ignore[union-attr]
        out.append(json.loads(f'"{text[pos:end]}"'))
        if end == len(text):
            return "".join(out)
        if text.startswith("\\'", end):
            out.append("'")
            pos = end + 2
        elif text.startswith("\\u", end):  # bad hex digits or a surrogate not in a pair
            raise ParseError(f"{text[end:end + 6]} is not a valid Unicode character")
        else:
            raise ParseError("invalid escape sequence in string")


class _Piece(str):
    """Text already encoded, queued among values still to encode."""


def dumps(value: Any) -> str:
    """JSON text of a decoded value, ASCII only, at any depth (json.dumps recurses)."""
    out: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Piece):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Piece("{")]
            for i, (key, member) in enumerate(item.items()):
                parts += [_Piece((", " if i else "") + json.dumps(key) + ": "), member]
            todo += reversed([*parts, _Piece("}")])
        elif isinstance(item, list):
            parts = [_Piece("[")]
            for i, member in enumerate(item):
                parts += [_Piece(", ")] * bool(i) + [member]
            todo += reversed([*parts, _Piece("]")])
        else:
            out.append(json.dumps(item, allow_nan=False))
    return "".join(out)
