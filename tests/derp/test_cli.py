"""The standalone server (python -m derp): flags, key file, plain HTTP and TLS."""

import os
import socket
import ssl
import stat
import subprocess
import sys

import pytest
import trio
import trustme

from derp import frames as fr
from derp.cli import serve_standalone
from derp.client import connect_url
from derp.errors import DerpError
from derp.keys import load_or_create_private_key, parse_private_key
from derp import stun

from .helpers import relayed, wait_until
from tests.ports import free_port as _free_port


def test_key_file_created_0600_and_reloaded(tmp_path):
    p = tmp_path / "sub" / "derp.key"
    k = load_or_create_private_key(str(p))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    text = p.read_text()
    assert text.startswith("privkey:") and len(text.strip()) == 8 + 64
    assert load_or_create_private_key(str(p)) == k
    os.chmod(p, 0o644)
    with pytest.raises(DerpError):
        load_or_create_private_key(str(p))
    with pytest.raises(DerpError):
        parse_private_key("nodekey:" + "00" * 32)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_standalone_plain_http(nursery, tmp_path, workers):
    info = await nursery.start(serve_standalone, [
        "-a", "127.0.0.1:0", "--plain-http", "--stun-port", "0",
        "--key-file", str(tmp_path / "k"), "--workers", workers,
    ])
    port = info["http_port"]
    a = await connect_url("http://127.0.0.1:%d" % port, fr.generate_private_key())
    b = await connect_url("http://127.0.0.1:%d" % port, fr.generate_private_key())
    assert a.server_public == info["server"].public_key
    await wait_until(lambda: info["server"].metrics()["clients"] == 2)
    assert (await relayed(a, b, b"hi")).packet == b"hi"
    # STUN on the same host.
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(stun.build_binding_request(b"t" * 12), ("127.0.0.1", info["stun_port"]))
        with trio.fail_after(5):
            data, _ = await sock.recvfrom(2048)
        assert stun.parse_binding_response(data)[2] == sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_standalone_tls(nursery, tmp_path, workers):
    ca = trustme.CA()
    cert = ca.issue_cert("derp.test", "127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "derp.test.crt"))
    cert.private_key_pem.write_to_path(str(tmp_path / "derp.test.key"))
    info = await nursery.start(serve_standalone, [
        "-a", "127.0.0.1:0", "--certdir", str(tmp_path), "--hostname", "derp.test",
        "--no-stun", "--key-file", str(tmp_path / "k"), "--workers", workers,
    ])
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    url = "https://127.0.0.1:%d" % info["http_port"]
    with trio.fail_after(10):
        a = await connect_url(url, fr.generate_private_key(), ssl_context=ctx)
        b = await connect_url(url, fr.generate_private_key(), ssl_context=ctx, websocket=True)
    await wait_until(lambda: info["server"].metrics()["clients"] == 2)
    assert (await relayed(b, a, b"over tls+ws")).packet == b"over tls+ws"


async def test_tls_needs_cert(tmp_path):
    with pytest.raises(DerpError, match="TLS needs"):
        await serve_standalone(["-a", "127.0.0.1:0"])
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(DerpError, match="cannot use"):
        await serve_standalone(["-a", "127.0.0.1:0", "--cert", str(tmp_path / "c.pem"),
                                "--key", str(tmp_path / "c.pem")])




async def test_python_m_derp_subprocess(tmp_path):
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-m", "derp", "-a", "127.0.0.1:%d" % port, "--plain-http",
         "--no-stun", "--key-file", str(tmp_path / "k"), "--log-level", "WARNING"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(15):
            while True:
                try:
                    c = await connect_url("http://127.0.0.1:%d" % port, fr.generate_private_key())
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read()
                    await trio.sleep(0.1)
        key = parse_private_key((tmp_path / "k").read_text())
        assert c.server_public == fr.public_key(key)
        await c.aclose()
    finally:
        proc.terminate()
        proc.wait(5)
