"""A provider that is down when the server starts (issue 11): with
oidc.only_start_if_oidc_is_available (Headscale's default) the server does not start and says
why; without it, it serves, says so, falls back to the admin's page, and signs people in once
the provider answers."""

from __future__ import annotations

import logging
import urllib.request

import pytest
import trio

from appliance.config import ConfigError, config_from_dict
from appliance.control.hostinfo import Hostinfo
from appliance.serve import serve

from ..oidc.discovery_stub import serve_discovery
from ..ports import free_port

HOST = "127.0.0.1"


def config(tmp_path, port: int, issuer_port: int, only_start: bool):
    return config_from_dict({
        "server_url": f"http://{HOST}:{port}", "listen_addr": f"{HOST}:{port}",
        "data_dir": str(tmp_path / "data"), "unix_socket": str(tmp_path / "data" / "s.sock"),
        "dns": {"base_domain": "ts.test", "override_local_dns": False}, "derp": {"server": {"enabled": False}},
        "oidc": {"issuer": f"http://{HOST}:{issuer_port}", "client_id": "c", "client_secret": "s",
                 "only_start_if_oidc_is_available": only_start},
    })


def get_no_redirect(url: str) -> tuple[int, str, str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        r = opener.open(url, timeout=5)
        return r.status, r.read().decode(), ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("location", "")


async def test_the_server_does_not_start_without_its_provider_by_default(tmp_path, nursery):
    with pytest.raises(ConfigError, match="unavailable.*only_start_if_oidc_is_available"):
        with trio.fail_after(30):
            await nursery.start(serve, config(tmp_path, free_port(), free_port(), True))


async def test_without_only_start_it_serves_and_signs_in_once_the_provider_is_back(tmp_path, nursery, caplog):
    caplog.set_level(logging.INFO)
    port, issuer_port = free_port(), free_port()
    running = await nursery.start(serve, config(tmp_path, port, issuer_port, False))
    assert "serving anyway" in caplog.text
    control = running.control
    req = control.auth.start_registration(machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64,
                                          hostinfo=Hostinfo(hostname="laptop"), remote="127.0.0.1:1",
                                          now=control.tailnet.clock())
    url = f"http://{HOST}:{port}/register/{req.auth_id}"
    status, body, _ = await trio.to_thread.run_sync(get_no_redirect, url)
    assert status == 200 and f"auth register --auth-id {req.auth_id}" in body  # the admin can still approve
    await serve_discovery(HOST, issuer_port, nursery)
    with trio.fail_after(20):
        while True:
            status, body, location = await trio.to_thread.run_sync(get_no_redirect, url)
            if status == 302:
                break
            await trio.sleep(0.5)
    assert location.startswith(f"http://{HOST}:{issuer_port}/authorize?") and "code_challenge" not in location
    assert "is available again" in caplog.text
    running.cancel_scope.cancel()
