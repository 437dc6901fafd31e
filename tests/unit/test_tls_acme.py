"""The appliance obtains, serves, renews and reuses an ACME certificate, against a real ACME
server: Debian's pebble on loopback (tests/autocert/pebble.py), its validation ports pointed at
trioscale's listeners. Also: ACME failures never stop the control plane from starting."""

from __future__ import annotations

import json
import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio

from appliance.adminclient import AdminClient
from appliance.config import config_from_dict
from appliance.serve import serve
from tests.autocert.pebble import Pebble, free_port, run_pebble

ORDER_TIMEOUT = 60


@pytest.fixture(scope="module")
def pebble(tmp_path_factory) -> Pebble:
    with run_pebble(tmp_path_factory.mktemp("pebble")) as p:
        yield p


def acme_cfg(tmp_path: Path, pebble: Pebble, host: str, challenge: str, *, main_port: int,
             http_port: int, **over):
    doc = {
        "server_url": f"https://{host}:{main_port}",
        "listen_addr": f"127.0.0.1:{main_port}",
        "data_dir": str(tmp_path / "data"),
        "unix_socket": str(tmp_path / "data" / "s.sock"),
        "dns": {"base_domain": "ts.test"},
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0", "verify_clients": False}},
        "tls_letsencrypt_hostname": host,
        "tls_letsencrypt_challenge_type": challenge,
        "tls_letsencrypt_listen": f"127.0.0.1:{http_port}",
        "acme_url": pebble.directory_url,
        "acme_email": "ops@trioscale.test",
        "acme_ca_bundle": pebble.ca_bundle,
        **over,
    }
    return config_from_dict(doc, env={"HOME": str(tmp_path)})


def https_get(port: int, host: str, root: str, path: str = "/key?v=130") -> tuple[int, bytes, dict, str]:
    """A real TLS client: verifies pebble's chain and the name; one HTTP/1.1 GET."""
    ctx = ssl.create_default_context(cafile=root)
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # as Go's HTTP client offers
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            peercert, alpn = tls.getpeercert(), tls.selected_alpn_protocol()
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), body, peercert, alpn


def http_get(port: int, path: str, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


async def admin(cfg, path: str) -> dict:
    return await trio.to_thread.run_sync(AdminClient(cfg.unix_socket).call, "GET", path)


async def test_tls_alpn01_certificate_served_to_a_real_client(pebble: Pebble, tmp_path: Path) -> None:
    host = "alpn.trioscale.test"
    cfg = acme_cfg(tmp_path, pebble, host, "TLS-ALPN-01", main_port=pebble.tls_port, http_port=free_port())
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, cfg)
        with trio.fail_after(ORDER_TIMEOUT):
            await running.certs.wait_certificate()
        status, body, peercert, alpn = await trio.to_thread.run_sync(
            https_get, pebble.tls_port, host, pebble.root_path)
        doc = await admin(cfg, "/api/v1/certs")
        nursery.cancel_scope.cancel()
    assert status == 200 and json.loads(body)["publicKey"].startswith("mkey:")
    assert alpn == "http/1.1"
    assert ("DNS", host) in peercert["subjectAltName"]
    assert doc["tls"] is True
    cert = doc["certificate"]
    assert cert["source"] == "acme" and cert["names"] == [host]
    assert "Pebble" in cert["issuer"] and not cert["expired"] and cert["last_error"] is None
    assert cert["not_after"] > cert["next_renewal"]
    assert int(cert["serial"], 16) == int(peercert["serialNumber"], 16)
    assert running.certs.orders_placed == 1


async def test_http01_certificate_redirect_and_cache_reuse_on_restart(
        pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    host = "http.trioscale.test"
    main = free_port()
    cfg = acme_cfg(tmp_path, pebble, host, "HTTP-01", main_port=main, http_port=pebble.http_port)
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, cfg)
        with trio.fail_after(ORDER_TIMEOUT):
            await running.certs.wait_certificate()
        status, _, peercert, _ = await trio.to_thread.run_sync(https_get, main, host, pebble.root_path)
        redirect = await trio.to_thread.run_sync(http_get, pebble.http_port, "/register?x=1", host)
        nursery.cancel_scope.cancel()
    assert status == 200 and ("DNS", host) in peercert["subjectAltName"]
    assert running.certs.orders_placed == 1
    assert redirect.startswith(b"HTTP/1.1 301")
    assert f"Location: https://{host}:{main}/register?x=1\r\n".encode() in redirect
    first = running.certs.status()

    # A restart reuses the cache: the certificate is served at once and no order is placed.
    caplog.set_level(logging.INFO, logger="autocert")
    caplog.clear()
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, cfg)
        assert running.certs.current_context() is not None
        status, _, peercert, _ = await trio.to_thread.run_sync(https_get, main, host, pebble.root_path)
        await trio.sleep(0.5)  # room for a wrongly scheduled order to start
        nursery.cancel_scope.cancel()
    assert status == 200
    assert running.certs.orders_placed == 0
    assert int(peercert["serialNumber"], 16) == int(first["serial"], 16)
    assert "ordering a certificate" not in caplog.text


async def test_renews_short_lived_certificates(tmp_path: Path) -> None:
    # pebble's certificates live 9 s here, so renewal is due after about 6 s.
    with run_pebble(tmp_path / "pebble", validity=9) as short:
        host = "renew.trioscale.test"
        cfg = acme_cfg(tmp_path, short, host, "TLS-ALPN-01", main_port=short.tls_port,
                       http_port=free_port())
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, cfg)
            with trio.fail_after(ORDER_TIMEOUT):
                await running.certs.wait_certificate()
            first = (await admin(cfg, "/api/v1/certs"))["certificate"]
            with trio.fail_after(ORDER_TIMEOUT):
                while running.certs.status()["serial"] == first["serial"]:
                    await trio.sleep(0.2)
            second = (await admin(cfg, "/api/v1/certs"))["certificate"]
            status, _, peercert, _ = await trio.to_thread.run_sync(
                https_get, short.tls_port, host, short.root_path)
            nursery.cancel_scope.cancel()
    assert second["not_after"] > first["not_after"] and second["last_error"] is None
    assert running.certs.orders_placed == 2
    assert status == 200 and int(peercert["serialNumber"], 16) == int(second["serial"], 16)


@pytest.mark.parametrize("case", ["unresolvable", "acme-down"])
async def test_acme_failure_does_not_stop_the_control_plane(
        pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    caplog.set_level(logging.INFO)
    main = free_port()
    if case == "unresolvable":
        host, over = "nx-nowhere.trioscale.test", {}  # the DNS stub answers NXDOMAIN
        expect = "resolve"
    else:
        host, over = "down.trioscale.test", {"acme_url": f"https://127.0.0.1:{free_port()}/dir"}
        expect = "acme_url"
    cfg = acme_cfg(tmp_path, pebble, host, "HTTP-01", main_port=main, http_port=free_port(), **over)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            running = await nursery.start(serve, cfg)  # does not wait for a certificate
        users = await admin(cfg, "/api/v1/user")  # the control plane answers
        with trio.fail_after(ORDER_TIMEOUT):
            while running.certs.status()["failures"] == 0:
                await trio.sleep(0.1)
        # With no certificate yet, a TLS connection is closed, and the server serves on.
        with pytest.raises((ssl.SSLError, OSError)):
            await trio.to_thread.run_sync(https_get, main, host, pebble.root_path)
        doc = await admin(cfg, "/api/v1/certs")
        nursery.cancel_scope.cancel()
    assert users == {"users": []}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert host in errors[0] and expect in errors[0] and "\n" not in errors[0]
    assert doc["certificate"]["names"] == [] and doc["certificate"]["last_error"]


async def test_busy_port_80_is_one_log_line_not_a_failed_start(
        pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port80 = busy.getsockname()[1]
    host = "busy.trioscale.test"
    cfg = acme_cfg(tmp_path, pebble, host, "TLS-ALPN-01", main_port=pebble.tls_port, http_port=port80)
    try:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(serve, cfg)
            with trio.fail_after(ORDER_TIMEOUT):
                await running.certs.wait_certificate()  # TLS-ALPN-01 needs no port 80
            nursery.cancel_scope.cancel()
    finally:
        busy.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "tls_letsencrypt_listen" in errors[0], errors
