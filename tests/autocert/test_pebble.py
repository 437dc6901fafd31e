"""Against a real ACME server: Debian's pebble on loopback (see pebble.py)."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio

from autocert import CertManager, TLSAcceptor, serve_http01
from autocert.manager import normalize_challenge_type

from .pebble import Pebble, run_pebble

ORDER_TIMEOUT = 60


async def serve_tls(acceptor: TLSAcceptor, port: int, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A minimal TLS app: answers each line with 'hello <alpn>'."""
    async def handler(tcp: trio.SocketStream) -> None:
        stream = await acceptor.accept(tcp)
        if stream is None:
            return
        async with stream:
            with trio.move_on_after(5):
                await stream.receive_some(100)
                await stream.send_all(f"hello {stream.selected_alpn_protocol()}\n".encode())

    await trio.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)


def tls_client(port: int, hostname: str, root_path: str) -> tuple[str | None, str, dict, bytes]:
    """A real blocking TLS client: verifies the chain against pebble's root and the name."""
    ctx = ssl.create_default_context(cafile=root_path)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(b"ping\n")
            reply = tls.recv(100)
            return tls.selected_alpn_protocol(), tls.version() or "", tls.getpeercert(), reply


async def obtain(pebble: Pebble, cache: Path, hostname: str, challenge: str,
                 nursery: trio.Nursery) -> CertManager:
    mgr = CertManager(hostname, cache, pebble.directory_url, "ops@trioscale.test", challenge,
                      ca_bundle=pebble.ca_bundle)
    await nursery.start(serve_tls, TLSAcceptor(mgr), pebble.tls_port)
    if normalize_challenge_type(challenge) == "http-01":
        await nursery.start(serve_http01, mgr, "127.0.0.1", pebble.http_port)
    await nursery.start(mgr.run)
    return mgr


async def test_tls_alpn01_certificate_and_real_client(pebble: Pebble, tmp_path: Path) -> None:
    host = "alpn.trioscale.test"
    async with trio.open_nursery() as nursery:
        mgr = await obtain(pebble, tmp_path / "cache", host, "TLS-ALPN-01", nursery)
        with trio.fail_after(ORDER_TIMEOUT):
            await mgr.wait_certificate()
        alpn, version, peercert, reply = await trio.to_thread.run_sync(
            tls_client, pebble.tls_port, host, pebble.root_path)
        nursery.cancel_scope.cancel()
    assert alpn == "http/1.1"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert ("DNS", host) in peercert["subjectAltName"]
    assert reply == b"hello http/1.1\n"
    status = mgr.status()
    assert status["names"] == [host]
    assert "Pebble" in status["issuer"]
    assert status["last_error"] is None and not status["expired"]
    assert status["next_renewal"] < status["not_after"]
    assert mgr.orders_placed == 1
    assert (tmp_path / "cache" / "acme_account.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache" / f"{host}.key").stat().st_mode & 0o777 == 0o600


async def test_http01_certificate_and_cache_reuse(pebble: Pebble, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    host = "http.trioscale.test"
    cache = tmp_path / "cache"
    async with trio.open_nursery() as nursery:
        mgr = await obtain(pebble, cache, host, "HTTP-01", nursery)
        with trio.fail_after(ORDER_TIMEOUT):
            await mgr.wait_certificate()
        nursery.cancel_scope.cancel()
    first = mgr.status()
    assert first["names"] == [host] and mgr.orders_placed == 1
    account_key = (cache / "acme_account.key").read_bytes()

    # A restart: the cached certificate is served at once and no order is placed.
    caplog.set_level(logging.INFO, logger="autocert")
    async with trio.open_nursery() as nursery:
        mgr2 = await obtain(pebble, cache, host, "HTTP-01", nursery)
        assert mgr2.current_context() is not None
        alpn, _, peercert, _ = await trio.to_thread.run_sync(
            tls_client, pebble.tls_port, host, pebble.root_path)
        await trio.sleep(0.5)  # give a wrongly-scheduled order the chance to start
        nursery.cancel_scope.cancel()
    assert alpn == "http/1.1"
    assert mgr2.status()["serial"] == first["serial"]
    assert mgr2.orders_placed == 0
    assert "using cached certificate" in caplog.text
    assert "ordering a certificate" not in caplog.text
    assert (cache / "acme_account.key").read_bytes() == account_key


async def test_renewal_with_short_lived_certificates(tmp_path: Path) -> None:
    # A pebble of its own: every certificate lives 9 s, so renewal is due after 6 s.
    with run_pebble(tmp_path / "pebble", validity=9) as short:
        host = "renew.trioscale.test"
        async with trio.open_nursery() as nursery:
            mgr = await obtain(short, tmp_path / "cache", host, "TLS-ALPN-01", nursery)
            with trio.fail_after(ORDER_TIMEOUT):
                await mgr.wait_certificate()
            first = mgr.status()
            with trio.fail_after(ORDER_TIMEOUT):
                while mgr.status()["serial"] == first["serial"]:
                    await trio.sleep(0.2)
            second = mgr.status()
            alpn, _, peercert, _ = await trio.to_thread.run_sync(
                tls_client, short.tls_port, host, short.root_path)
            nursery.cancel_scope.cancel()
    assert second["not_after"] > first["not_after"]
    assert mgr.orders_placed == 2
    assert second["last_error"] is None
    assert alpn == "http/1.1"
    # the new certificate is the one on disk for the next start
    assert (tmp_path / "cache" / f"{host}.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE")


@pytest.mark.parametrize("challenge", ["TLS-ALPN-01", "HTTP-01"])
async def test_unresolvable_hostname_logs_one_clear_line(
        pebble: Pebble, tmp_path: Path, caplog: pytest.LogCaptureFixture, challenge: str) -> None:
    host = "nx-missing.trioscale.test"  # the DNS stub answers NXDOMAIN
    caplog.set_level(logging.INFO, logger="autocert")
    async with trio.open_nursery() as nursery:
        mgr = await obtain(pebble, tmp_path / "cache", host, challenge, nursery)
        with trio.fail_after(ORDER_TIMEOUT):
            while mgr.status()["failures"] == 0:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    line = errors[0].getMessage()
    assert "\n" not in line
    assert host in line and "resolve" in line
    assert "next attempt at" in line and "no certificate to serve yet" in line
    assert mgr.current_context() is None
    assert mgr.status()["last_error"]


async def test_closed_port_logs_one_clear_line(pebble: Pebble, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    host = "closed.trioscale.test"
    caplog.set_level(logging.INFO, logger="autocert")
    # No TLS listener on pebble's tlsPort: validation gets "connection refused".
    mgr = CertManager(host, tmp_path / "cache", pebble.directory_url, None, "TLS-ALPN-01",
                      ca_bundle=pebble.ca_bundle)
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)
        with trio.fail_after(ORDER_TIMEOUT):
            while mgr.status()["failures"] == 0:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "port 443" in errors[0] and "firewall" in errors[0], errors[0]


async def test_unreachable_acme_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="autocert")
    from .pebble import free_port
    url = f"https://127.0.0.1:{free_port()}/dir"  # nothing listens there
    mgr = CertManager("down.trioscale.test", tmp_path / "cache", url, None, "HTTP-01")
    async with trio.open_nursery() as nursery:
        await nursery.start(mgr.run)
        with trio.fail_after(30):
            while mgr.status()["failures"] == 0:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "cannot reach ACME server" in errors[0] and "acme_url" in errors[0]
