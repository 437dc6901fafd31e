"""A HuJSON reader that remembers where every value starts.

HuJSON is JSON plus // and /* */ comments and trailing commas (Tailscale's
policy file format, github.com/tailscale/hujson). It is deliberately stricter
than JSON5: no single quotes, no bare keys, no hex numbers. We parse it
ourselves rather than through json5 so that errors about a field can point at
the line and column where the field is written.
"""

from __future__ import annotations

import bisect
import json
import re

from .errors import ParseError

Path = tuple  # of str keys and int indexes

# A policy is a few KiB; the largest real ones (many hosts, tests) a few hundred. The limits
# stop a file that would take the process's memory or stack, not any real policy.
MAX_POLICY_BYTES = 1 << 20
# Real policies nest about 5 deep. The reader recurses once per level, so without a bound a
# file of 100k "[" would end in a RecursionError (or worse) instead of a clear refusal.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class Positions:
    """Path → (line, column), computed on lookup from the offsets the reader recorded:
    counting lines for every value as it is read would make parsing quadratic in the size."""

    def __init__(self, text: str, offsets: dict[Path, int]) -> None:
        self._text = text
        self._offsets = offsets
        self._line_starts: list[int] | None = None

    def line_col(self, i: int) -> tuple[int, int]:
        if self._line_starts is None:
            starts = [0]
            j = self._text.find("\n")
            while j >= 0:
                starts.append(j + 1)
                j = self._text.find("\n", j + 1)
            self._line_starts = starts
        line = bisect.bisect_right(self._line_starts, i)
        return line, i - self._line_starts[line - 1] + 1

    def get(self, path: Path, default=None) -> tuple[int, int] | None:
        i = self._offsets.get(path)
        return default if i is None else self.line_col(i)

    def __getitem__(self, path: Path) -> tuple[int, int]:
        return self.line_col(self._offsets[path])

    def __contains__(self, path: object) -> bool:
        return path in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.depth = 0
        self.offsets: dict[Path, int] = {}

    def fail(self, msg: str, i: int | None = None) -> ParseError:
        line, col = Positions(self.s, {}).line_col(self.i if i is None else i)
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
        self.offsets[path] = self.i
        c = self.s[self.i]
        if c in "{[":
            if self.depth >= MAX_DEPTH:
                raise self.fail(f"nested more than {MAX_DEPTH} levels deep")
            self.depth += 1
            try:
                return self.obj(path) if c == "{" else self.arr(path)
            finally:
                self.depth -= 1
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
            self.offsets[path + (key, "<key>")] = key_at
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
            val = json.loads(s[start:j + 1])
        except ValueError as exc:
            raise self.fail(f"invalid string literal: {exc.msg}", start) from None
        if "\\u" in s[start:j + 1]:
            # A lone surrogate escape ("\udc80") decodes to no character; Go's decoder, which
            # Tailscale's uses, reads it as U+FFFD, so do we (and nothing downstream has to
            # cope with text that cannot be encoded).
            val = _SURROGATE.sub("\ufffd", val)
        return val

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


def loads(text: str | bytes) -> tuple[object, Positions]:
    """Parse HuJSON; return the value and a map from path to (line, column).

    Raises ParseError (with line and column where there is one) on malformed input, on text
    that is not UTF-8, and past MAX_POLICY_BYTES or MAX_DEPTH.
    """
    if isinstance(text, bytes):
        raw = text
        if len(raw) > MAX_POLICY_BYTES:
            raise too_large(len(raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError(f"the policy is not UTF-8 text (byte {e.start}: {e.reason})") from None
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:  # a lone surrogate, from "\udc80"-style JSON
            raise ParseError(f"the policy is not UTF-8 text (character {e.start}: {e.reason})") from None
        if size > MAX_POLICY_BYTES:
            raise too_large(size)
    r = _Reader(text)
    val = r.value(())
    r.skip()
    if r.i != len(r.s):
        raise r.fail("invalid character after top-level value")
    return val, Positions(text, r.offsets)


def too_large(size: int) -> ParseError:
    return ParseError(f"the policy is {size} bytes; at most {MAX_POLICY_BYTES} are allowed")
