"""Requests the server makes to others (DERP maps, identity providers): blocking urllib in a
worker thread, with a deadline and a size limit on every answer. https is checked against the
system trust store (``SSL_CERT_FILE`` works) unless a context says otherwise."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import trio

TIMEOUT = 15.0
MAX_BODY = 1 << 20  # no document we fetch (discovery, keys, tokens, a DERP map is 4 MiB) is larger


class FetchError(Exception):
    """The request got no HTTP answer (DNS, refused, TLS, timeout) or a too large one."""


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx itself is the answer


def fetch(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
          limit: int = MAX_BODY, timeout: float = TIMEOUT, ssl_context: ssl.SSLContext | None = None,
          follow_redirects: bool = True) -> Fetched:
    """One request, blocking. HTTP error statuses (and, without ``follow_redirects``,
    redirects) are answers; everything else that goes wrong is a FetchError with the reason."""
    if not url.startswith(("https://", "http://")):
        raise FetchError(f"{url}: not an http(s) URL")
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"User-Agent": "trioscale", **(headers or {})})
    ctx = ssl_context or ssl.create_default_context()
    handlers = [urllib.request.HTTPSHandler(context=ctx)] + ([] if follow_redirects else [_NoRedirect()])
    try:
        resp = urllib.request.build_opener(*handlers).open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        resp = e
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise FetchError(f"{url}: {getattr(e, 'reason', e)}") from None
    try:
        with resp:
            body = resp.read(limit + 1)
    except OSError as e:
        raise FetchError(f"{url}: {e}") from None
    if len(body) > limit:
        raise FetchError(f"{url}: answer larger than {limit} bytes")
    return Fetched(resp.status, body, {k.lower(): v for k, v in resp.headers.items()})


async def fetch_async(url: str, *, limiter: trio.CapacityLimiter | None = None, **kw) -> Fetched:
    """fetch() in a worker thread; a cancelled caller does not wait for it. ``limiter``: the
    threads a kind of request may hold at once (default: trio's shared pool)."""
    return await trio.to_thread.run_sync(lambda: fetch(url, **kw), abandon_on_cancel=True, limiter=limiter)
