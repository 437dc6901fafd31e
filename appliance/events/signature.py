"""Webhook signatures: HMAC-SHA256 with the webhook's secret over ``TIMESTAMP.BODY``, sent as
``X-Trioscale-Signature: t=TIMESTAMP,v1=HEX`` (the scheme Stripe made common). A receiver
recomputes it over the raw body, compares in constant time, and refuses a timestamp more than a
few minutes old (a replayed request). Each attempt is signed anew with its own timestamp."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Trioscale-Signature"
TOLERANCE = 300  # seconds a receiver should accept (what verify() defaults to)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, now: int, tolerance: int = TOLERANCE) -> bool:
    """What a receiver does (the README shows it); used by the tests."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance:
        return False
    want = sign(secret, t, body).split("v1=", 1)[1]
    return hmac.compare_digest(want, parts.get("v1", ""))
