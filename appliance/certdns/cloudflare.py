"""``provider: cloudflare``: challenge records through Cloudflare's v4 API. An example of the
pattern for any DNS provider with an HTTP API: find the zone that holds the base domain, create
a TXT record per challenge, delete it when the challenge is over.

    GET    {api}/zones?name=example.com                 → [{"id": ...}]
    POST   {api}/zones/{zone}/dns_records               {"type": "TXT", "name", "content", "ttl"}
    GET    {api}/zones/{zone}/dns_records?type=TXT&name=...
    DELETE {api}/zones/{zone}/dns_records/{id}

Every answer is ``{"success": bool, "errors": [{"code", "message"}], "result": ...}``; the
token goes in ``Authorization: Bearer``. Calls run in a worker thread with urllib (as the DERP
map fetcher does), each with a timeout.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import trio

from ..config.model import CloudflareSettings
from .errors import ProviderError

CALL_TIMEOUT = 15.0
RECORD_TTL = 60  # Cloudflare's smallest TTL (1 means "automatic", which is 300)
MAX_ANSWER = 1 << 20  # bytes read from one API answer


class CloudflareProvider:
    name = "cloudflare"

    def __init__(self, settings: CloudflareSettings, base_domain: str,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.api = settings.api_url
        self.token = settings.api_token
        self.zone_id = settings.zone_id
        self.base_domain = base_domain
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._ids: dict[tuple[str, str], str] = {}  # (name, value) → record id, from creation

    def describe(self) -> dict[str, Any]:
        return {"api_url": self.api, "zone_id": self.zone_id}

    async def publish(self, name: str, value: str) -> None:
        zone = await self._zone()
        record = await self._call("POST", f"/zones/{quote(zone)}/dns_records",
                                  {"type": "TXT", "name": name, "content": value, "ttl": RECORD_TTL,
                                   "comment": "trioscale: ACME DNS-01 challenge"})
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            self._ids[(name, value)] = record["id"]

    async def withdraw(self, name: str, value: str) -> None:
        zone = await self._zone()
        ids = [self._ids.pop((name, value))] if (name, value) in self._ids else await self._find(zone, name, value)
        for record_id in ids:
            await self._call("DELETE", f"/zones/{quote(zone)}/dns_records/{quote(record_id)}")

    async def _find(self, zone: str, name: str, value: str) -> list[str]:
        found = await self._call("GET", f"/zones/{quote(zone)}/dns_records?" + urlencode({"type": "TXT", "name": name}))
        return [r["id"] for r in found or () if isinstance(r, dict) and isinstance(r.get("id"), str)
                and str(r.get("content", "")).strip('"') == value]

    async def _zone(self) -> str:
        """The zone's ID: configured, or the closest enclosing zone of the base domain that the
        token can see (ts.example.com is usually a name inside the zone example.com)."""
        if self.zone_id:
            return self.zone_id
        labels = self.base_domain.split(".")
        candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)]
        for candidate in candidates:
            found = await self._call("GET", "/zones?" + urlencode({"name": candidate}))
            if found and isinstance(found[0], dict) and isinstance(found[0].get("id"), str):
                self.zone_id = found[0]["id"]
                return self.zone_id
        raise ProviderError(f"Cloudflare: the API token sees no zone holding {self.base_domain} "
                            f"(looked for {', '.join(candidates)}); set dns.certificates.cloudflare.zone_id")

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        return await trio.to_thread.run_sync(self._call_sync, method, path, body, abandon_on_cancel=True)

    def _call_sync(self, method: str, path: str, body: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json",
            "Accept": "application/json", "User-Agent": "trioscale",
        })
        try:
            with urllib.request.urlopen(req, timeout=CALL_TIMEOUT, context=self.ssl_context) as resp:
                answer = resp.read(MAX_ANSWER)
        except urllib.error.HTTPError as e:
            answer = e.read(MAX_ANSWER)
            doc = _json(answer)
            raise ProviderError(f"Cloudflare API {method} {path.split('?')[0]}: HTTP {e.code}: {_errors(doc)}") from None
        except (OSError, ValueError) as e:
            raise ProviderError(f"Cloudflare API {method} {path.split('?')[0]}: {e}") from None
        doc = _json(answer)
        if not isinstance(doc, dict) or doc.get("success") is not True:
            raise ProviderError(f"Cloudflare API {method} {path.split('?')[0]}: {_errors(doc)}")
        return doc.get("result")


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _errors(doc: Any) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list) and doc["errors"]:
        return "; ".join(f"{e.get('message', '?')} (code {e.get('code', '?')})" if isinstance(e, dict) else str(e)
                         for e in doc["errors"][:5])[:500]
    return "an answer that is not Cloudflare's API (no success, no errors)"
