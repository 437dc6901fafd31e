"""Byte-level mutation of valid inputs: the inputs that reach deepest are almost valid."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw, base: bytes, max_edits: int = 4) -> bytes:
    """``base`` with a few byte flips, insertions, deletions or truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_edits))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "dup" and data:
            data[at:at] = data[at:at + draw(st.integers(1, 32))]
    return bytes(data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the (sorted, in-range) positions ``cuts``."""
    out, last = [], 0
    for c in sorted({min(max(c, 0), len(data)) for c in cuts}):
        out.append(data[last:c])
        last = c
    out.append(data[last:])
    return [c for c in out if c]
