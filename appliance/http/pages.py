"""Small HTML pages for people (login, approval, refusals): one layout, every value escaped."""

from __future__ import annotations

import html

from .server import Answer

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}"
    "pre{background:#f4f4f4;padding:.8em;overflow-x:auto}dt{font-weight:bold}dd{margin:0 0 .5em 0}"
    "button{font-size:1em;padding:.4em 1.2em;margin-right:.5em}"
)

# Pages are never framed (clickjacking of the confirm button) and never cached.
_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(status: int, title: str, body: str, headers: list[tuple[str, str]] = ()) -> Answer:
    """``body`` is HTML the caller built with esc() around every outside value."""
    doc = (f"<!doctype html><html><head><meta charset=utf-8><title>trioscale: {esc(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n")
    return status, [*_HEADERS, *headers], doc.encode()


def message(status: int, title: str, text: str, hint: str = "") -> Answer:
    """A page that says one thing (a refusal, an expired link) and what to do next."""
    body = f"<p>{esc(text)}</p>" + (f"<p>{esc(hint)}</p>" if hint else "")
    return page(status, title, body)
