"""``provider: cloudflare`` against a local stub of the parts of Cloudflare's v4 API it uses
(the real API cannot be reached from the tests): the zone is found from the base domain, records
are created and deleted with the bearer token, and API errors come back as clear messages."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from appliance.certdns.cloudflare import CloudflareProvider
from appliance.certdns.errors import ProviderError
from appliance.certdns.zone import CertZone
from appliance.config.model import CertificateSettings, CloudflareSettings

TOKEN = "test-token-0123456789"
ZONE_ID = "023e105f4ecef8ad9ca31a8372d0c353"
NAME = "_acme-challenge.alpha.ts.example.test"


class StubAPI:
    """Cloudflare's zones and dns_records endpoints for one zone, example.test."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.next_id = 1
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                api.calls.append((method, url.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(403, {"success": False, "result": None,
                                              "errors": [{"code": 10000, "message": "Authentication error"}]})
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                parts = url.path.split("/")[3:]  # after /client/v4
                if method == "GET" and parts == ["zones"]:
                    hit = [{"id": ZONE_ID, "name": "example.test"}] if query.get("name") == "example.test" else []
                    return self._answer(200, {"success": True, "errors": [], "result": hit})
                if parts[:3] != ["zones", ZONE_ID, "dns_records"]:
                    return self._answer(404, {"success": False, "errors": [{"code": 7003, "message": "Could not route"}]})
                if method == "POST":
                    doc = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    if doc.get("type") != "TXT" or not doc.get("name", "").endswith(".example.test"):
                        return self._answer(400, {"success": False, "errors": [{"code": 9000, "message": "bad record"}]})
                    rec = {"id": f"rec{api.next_id}", "type": "TXT", "name": doc["name"], "content": doc["content"],
                           "ttl": doc["ttl"]}
                    api.next_id += 1
                    api.records[rec["id"]] = rec
                    return self._answer(200, {"success": True, "errors": [], "result": rec})
                if method == "GET":
                    hits = [r for r in api.records.values() if r["name"] == query.get("name")]
                    return self._answer(200, {"success": True, "errors": [], "result": hits})
                if method == "DELETE" and len(parts) == 4 and parts[3] in api.records:
                    del api.records[parts[3]]
                    return self._answer(200, {"success": True, "errors": [], "result": {"id": parts[3]}})
                return self._answer(404, {"success": False, "errors": [{"code": 81044, "message": "Record does not exist."}]})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/client/v4"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def values(self, name: str) -> set[str]:
        return {r["content"] for r in self.records.values() if r["name"] == name}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api():
    stub = StubAPI()
    yield stub
    stub.close()


def provider(api: StubAPI, token: str = TOKEN, zone_id: str | None = None) -> CloudflareProvider:
    return CloudflareProvider(CloudflareSettings(api_token=token, zone_id=zone_id, api_url=api.url), "ts.example.test")


async def test_zone_is_found_and_records_come_and_go(api):
    cf = provider(api)
    await cf.publish(NAME, "value-1")
    await cf.publish(NAME, "value-2")
    assert api.values(NAME) == {"value-1", "value-2"}
    # ts.example.test is no zone of its own; example.test is, one label up.
    assert [p for m, p in api.calls if p.endswith("/zones")] == ["/client/v4/zones"] * 2
    assert cf.zone_id == ZONE_ID
    await cf.withdraw(NAME, "value-1")
    assert api.values(NAME) == {"value-2"}
    # A record created before a restart (no id remembered) is found by name and value.
    await provider(api, zone_id=ZONE_ID).withdraw(NAME, "value-2")
    assert api.values(NAME) == set()


async def test_zone_sweeper_uses_the_api(api):
    now = [0.0]
    settings = CertificateSettings(enabled=True, provider="cloudflare",
                                   cloudflare=CloudflareSettings(api_token=TOKEN, zone_id=None, api_url=api.url))
    zone = CertZone(settings, "ts.example.test", clock=lambda: now[0])
    await zone.publish(NAME, "swept")
    assert api.values(NAME) == {"swept"}
    now[0] = 1e6
    await zone._withdraw(zone.records.expire(now[0]))
    assert api.values(NAME) == set()


async def test_api_errors_are_clear(api):
    with pytest.raises(ProviderError, match=r"HTTP 403: Authentication error \(code 10000\)"):
        await provider(api, token="wrong").publish(NAME, "v")
    with pytest.raises(ProviderError, match="sees no zone holding ts.other.test"):
        await CloudflareProvider(CloudflareSettings(TOKEN, None, api.url), "ts.other.test").publish("x", "v")
    with pytest.raises(ProviderError, match="HTTP 400: bad record"):
        await provider(api, zone_id=ZONE_ID).publish("_acme-challenge.alpha.ts.elsewhere.test", "v")


async def test_unreachable_or_not_the_api(api):
    dead = CloudflareSettings(TOKEN, ZONE_ID, "http://127.0.0.1:1/client/v4")
    with pytest.raises(ProviderError, match="Cloudflare API POST"):
        await CloudflareProvider(dead, "ts.example.test").publish(NAME, "v")
