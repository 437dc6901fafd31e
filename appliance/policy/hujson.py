"""A HuJSON reader that remembers where every value starts.

HuJSON is JSON plus // and /* */ comments and trailing commas (Tailscale's
policy file format, github.com/tailscale/hujson). It is deliberately stricter
than JSON5: no single quotes, no bare keys, no hex numbers. We parse it
ourselves rather than through json5 so that errors about a field can point at
the line and column where the field is written.
"""

from __future__ import annotations

import json

from .errors import ParseError

Path = tuple  # of str keys and int indexes


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.positions: dict[Path, tuple[int, int]] = {}

    def where(self, i: int | None = None) -> tuple[int, int]:
        i = self.i if i is None else i
        line = self.s.count("\n", 0, i) + 1
        col = i - (self.s.rfind("\n", 0, i) + 1) + 1
        return line, col

    def fail(self, msg: str, i: int | None = None) -> ParseError:
        line, col = self.where(i)
        return ParseError(msg, line=line, column=col)

    def skip(self) -> None:
        s, n = self.s, len(self.s)
        while self.i < n:
            c = s[self.i]
            if c in " \t\r\n\ufeff":
                self.i += 1
            elif s.startswith("//", self.i):
                j = s.find("\n", self.i)
                self.i = n if j < 0 else j + 1
            elif s.startswith("/*", self.i):
                j = s.find("*/", self.i + 2)
                if j < 0:
                    raise self.fail("unterminated block comment")
                self.i = j + 2
            else:
                return

    def value(self, path: Path):
        self.skip()
        if self.i >= len(self.s):
            raise self.fail("unexpected end of input")
        self.positions[path] = self.where()
        c = self.s[self.i]
        if c == "{":
            return self.obj(path)
        if c == "[":
            return self.arr(path)
        if c == '"':
            return self.string()
        for word, val in (("true", True), ("false", False), ("null", None)):
            if self.s.startswith(word, self.i):
                self.i += len(word)
                return val
        return self.number()

    def obj(self, path: Path) -> dict:
        self.i += 1
        out: dict = {}
        while True:
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == "}":
                self.i += 1
                return out
            if self.i >= len(self.s) or self.s[self.i] != '"':
                raise self.fail("invalid character, looking for beginning of object key string")
            key_at = self.i
            key = self.string()
            if key in out:
                raise self.fail(f"duplicate name {key!r} in object", key_at)
            self.positions[path + (key, "<key>")] = self.where(key_at)
            self.skip()
            if self.i >= len(self.s) or self.s[self.i] != ":":
                raise self.fail("invalid character after object key")
            self.i += 1
            out[key] = self.value(path + (key,))
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            if self.i < len(self.s) and self.s[self.i] == "}":
                self.i += 1
                return out
            raise self.fail("invalid character after object key:value pair")

    def arr(self, path: Path) -> list:
        self.i += 1
        out: list = []
        while True:
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == "]":
                self.i += 1
                return out
            out.append(self.value(path + (len(out),)))
            self.skip()
            if self.i < len(self.s) and self.s[self.i] == ",":
                self.i += 1
                continue
            if self.i < len(self.s) and self.s[self.i] == "]":
                self.i += 1
                return out
            raise self.fail("invalid character after array element")

    def string(self) -> str:
        start = self.i
        j = start + 1
        s = self.s
        while j < len(s):
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == '"':
                break
            if c == "\n":
                raise self.fail("invalid character in string literal", j)
            j += 1
        else:
            raise self.fail("unterminated string", start)
        self.i = j + 1
        try:
            return json.loads(s[start:j + 1])
        except ValueError as exc:
            raise self.fail(f"invalid string literal: {exc.msg}", start) from None

    def number(self):
        start = self.i
        s = self.s
        j = start
        while j < len(s) and s[j] in "+-0123456789.eE":
            j += 1
        text = s[start:j]
        if not text:
            raise self.fail(f"invalid character {s[start]!r} looking for beginning of value")
        try:
            val = json.loads(text)
        except ValueError:
            raise self.fail(f"invalid number {text!r}", start) from None
        self.i = j
        return val


def loads(text: str | bytes) -> tuple[object, dict[Path, tuple[int, int]]]:
    """Parse HuJSON; return the value and a map from path to (line, column).

    Raises ParseError with line and column on malformed input.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    r = _Reader(text)
    val = r.value(())
    r.skip()
    if r.i != len(r.s):
        raise r.fail("invalid character after top-level value")
    return val, r.positions
