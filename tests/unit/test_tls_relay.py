"""The appliance's main listener with manual certificates: control and DERP over TLS, the
metrics listener, and the DERP map sources (files, URLs, periodic update), in process."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio
import trustme

from appliance.config import ConfigError, config_from_dict
from appliance.control.mapper import Mapper, SessionView
from appliance.relay import DerpMapSource
from appliance.serve import serve
from appliance.tailnet.changes import ChangeBus, Pending
from derp import frames as fr
from derp.client import connect, connect_url
from tests.derp.helpers import relayed


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path):
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        with open(cert, "ab") as f:
            f.write(extra.bytes())
    return cert, key


def client_ctx(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def make_cfg(tmp_path, **over) -> object:
    doc = {
        "server_url": "https://127.0.0.1:0",
        "listen_addr": "127.0.0.1:0",
        "data_dir": str(tmp_path / "data"),
        "unix_socket": str(tmp_path / "data" / "s.sock"),
        "dns": {"base_domain": "ts.test"},
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0", "verify_clients": False}},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k] = {**doc[k], **v}
        else:
            doc[k] = v
    return config_from_dict(doc, env={"HOME": str(tmp_path)})


async def http_get(stream: trio.abc.Stream, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[("host", host)]))
                          + conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(ev, h11.Response):
            status = ev.status_code
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, body


@pytest.mark.parametrize("workers", [1, 2])
async def test_control_and_derp_share_the_tls_listener(tmp_path, certs, ca, workers):
    cert, key = certs
    cfg = make_cfg(tmp_path, tls_cert_path=str(cert), tls_key_path=str(key), metrics_listen_addr="127.0.0.1:0",
                   derp={"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0", "verify_clients": False,
                                    "workers": workers}})
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            running = await nursery.start(serve, cfg)
            port = running.ports[0]
            # DERP key file: created with mode 0600
            assert stat.S_IMODE(cfg.derp.private_key_path.stat().st_mode) == 0o600

            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            ctx = client_ctx(ca)
            ctx.set_alpn_protocols(["h2", "http/1.1"])  # as Go's HTTP client offers
            tls = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1", https_compatible=True)
            await tls.do_handshake()
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            status, body = await http_get(tls, "/key?v=130")
            assert status == 200 and json.loads(body)["publicKey"].startswith("mkey:")
            await tls.aclose()

            # `trioscale certs` reports the file's certificate through the admin socket.
            (tmp_path / "c.yaml").write_text(f"unix_socket: {cfg.unix_socket}\n")
            res = await trio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-m", "appliance", "-c", str(tmp_path / "c.yaml"), "certs", "-o", "json"],
                cwd=REPO, capture_output=True, text=True, timeout=30))
            doc = json.loads(res.stdout)
            assert doc["tls"] and doc["certificate"]["source"] == "file"
            assert "localhost" in doc["certificate"]["names"] and doc["certificate"]["next_renewal"] is None

            # Plain HTTP to the TLS port gets no HTTP answer; the listener keeps serving.
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            await tcp.send_all(b"GET /key HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            with trio.move_on_after(5):
                while chunk := await tcp.receive_some(4096):
                    got += chunk
            assert b"publicKey" not in got
            await tcp.aclose()

            # DERP over the same TLS listener, and the relay's counters on /metrics.
            priv = fr.generate_private_key()
            client = await connect_url(f"https://127.0.0.1:{port}", priv, ssl_context=client_ctx(ca))
            async with client:
                assert client.server_info.get("version") == 2
                mtcp = await trio.open_tcp_stream("127.0.0.1", running.metrics_port)
                status, body = await http_get(mtcp, "/metrics")
                await mtcp.aclose()
                text = body.decode()
                assert status == 200
                assert "trioscale_derp_clients 1\n" in text
                assert "trioscale_nodes 0\n" in text
                assert "# TYPE trioscale_derp_packets_relayed_total counter" in text
                assert "trioscale_stun_requests_total 0\n" in text
                assert ("\ntrioscale_derp_workers " in text) == (workers == 2)  # only with workers
        nursery.cancel_scope.cancel()


async def test_with_workers_a_keep_alive_connection_can_go_from_control_to_derp(tmp_path, certs, ca):
    """With workers, TLS is done in a worker; a first request that is not DERP goes back to
    the front door here (which sees the client's own address), and a DERP upgrade later on the
    same connection is handed to a worker again, under the first one's TLS."""
    cert, key = certs
    cfg = make_cfg(tmp_path, tls_cert_path=str(cert), tls_key_path=str(key), metrics_listen_addr="127.0.0.1:0",
                   derp={"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0", "verify_clients": False,
                                    "workers": 2}})
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            running = await nursery.start(serve, cfg)
            port = running.ports[0]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            tls = trio.SSLStream(tcp, client_ctx(ca), server_hostname="127.0.0.1", https_compatible=True)
            conn = h11.Connection(h11.CLIENT)
            await tls.send_all(conn.send(h11.Request(method="GET", target="/key?v=130",
                                                     headers=[("host", "127.0.0.1")]))
                               + conn.send(h11.EndOfMessage()))
            body = b""
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await tls.receive_some(65536))
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
            assert json.loads(body)["publicKey"].startswith("mkey:")
            first = await connect(tls, fr.generate_private_key(), host="127.0.0.1")
            second = await connect_url(f"https://127.0.0.1:{port}", fr.generate_private_key(),
                                       ssl_context=client_ctx(ca))
            ev = await relayed(first, second, b"after a control request")
            assert ev == fr.RecvPacket(first.public_key, b"after a control request")
            # Both workers come up (serve does not wait for them: connections do) and report.
            while True:
                mtcp = await trio.open_tcp_stream("127.0.0.1", running.metrics_port)
                status, text = await http_get(mtcp, "/metrics")
                await mtcp.aclose()
                derp = set(text.decode().splitlines())
                if {"trioscale_derp_clients 2", "trioscale_derp_workers 2"} <= derp:
                    break
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_plain_http_derp_upgrades_are_handed_to_workers(tmp_path):
    """Without TLS the front door reads the request and hands a /derp upgrade to a worker."""
    cfg = make_cfg(tmp_path, server_url="http://127.0.0.1:0",
                   derp={"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0", "verify_clients": False,
                                    "workers": 2}})
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            running = await nursery.start(serve, cfg)
            url = f"http://127.0.0.1:{running.ports[0]}"
            a = await connect_url(url, fr.generate_private_key())
            b = await connect_url(url, fr.generate_private_key(), websocket=True)
            assert a.server_public == b.server_public
            ev = await relayed(b, a, b"plain, over websocket, across workers")
            assert ev == fr.RecvPacket(b.public_key, b"plain, over websocket, across workers")
        nursery.cancel_scope.cancel()


async def test_a_slow_tls_handshake_is_cut_off(tmp_path, certs):
    from autocert import StaticCertificate, TLSAcceptor
    from appliance.tlsserve import tls_handler

    served = []

    async def handler(stream):
        served.append(stream)

    cert, key = certs
    source = StaticCertificate(cert, key)
    source.load()
    wrapped = tls_handler(handler, TLSAcceptor(source, handshake_timeout=0.3))
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(3):
        await wrapped(a)  # the peer says nothing at all
    assert served == []
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"x")


def test_bad_certificate_files_are_a_config_error(tmp_path):
    from appliance.tlsserve import certificate_source

    (tmp_path / "c.pem").write_text("not a cert")
    (tmp_path / "k.pem").write_text("not a key")
    cfg = make_cfg(tmp_path, tls_cert_path=str(tmp_path / "c.pem"), tls_key_path=str(tmp_path / "k.pem"))
    with pytest.raises(ConfigError, match="tls_cert_path"):
        certificate_source(cfg)


async def test_certificate_files_reload_when_changed(tmp_path, ca):
    from autocert import StaticCertificate

    def write(names):
        leaf = ca.issue_cert(*names)
        leaf.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
        leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))

    write(["one.test"])
    files = StaticCertificate(tmp_path / "c.pem", tmp_path / "k.pem")
    assert files.load()
    first = files.current_context()
    assert first.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not files.load() and files.current_context() is first
    write(["two.test"])
    import os
    os.utime(tmp_path / "c.pem", ns=(1, 1))  # an mtime surely different from before
    assert files.load()
    assert files.current_context() is not first
    assert files.status()["names"] == ["two.test"]


# --- DERP map sources --------------------------------------------------------------------


def region(rid: int, code: str) -> dict:
    return {"RegionID": rid, "RegionCode": code, "RegionName": code,
            "Nodes": [{"Name": f"{rid}a", "RegionID": rid, "HostName": f"{code}.example"}]}


async def serve_https_file(ca, content: dict, *, task_status=trio.TASK_STATUS_IGNORED):
    """A tiny HTTPS server answering every GET with ``content['body']`` (read per request)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)

    async def handle(stream):
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(ev, h11.EndOfMessage):
                    break
            body = content["body"].encode()
            await stream.send_all(
                conn.send(h11.Response(status_code=content.get("status", 200), headers=[("content-length", str(len(body)))]))
                + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_derp_map_merges_paths_urls_and_embedded_and_follows_updates(tmp_path, ca):
    content = {"body": json.dumps({"Regions": {"901": region(901, "url1"), "999": region(999, "shadowed")}})}
    path_file = tmp_path / "map.yaml"
    # Headscale's lower-case YAML layout; region 901 is overridden by the URL's.
    path_file.write_text("regions:\n  900:\n    regionid: 900\n    regioncode: file\n    nodes:\n"
                         "      - name: 900a\n        regionid: 900\n        hostname: file.example\n        stunport: 3478\n"
                         "  901:\n    regionid: 901\n    regioncode: fromfile\n    nodes: []\n")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_https_file, ca, content)
        cfg = make_cfg(tmp_path, derp={"urls": [f"https://127.0.0.1:{port}/derpmap"], "paths": [str(path_file)],
                                       "update_frequency": "1s"})
        src = DerpMapSource(cfg, ssl_context=client_ctx(ca))
        changes = []
        with trio.fail_after(10):
            await nursery.start(src.run, lambda: changes.append(src.current()))
            regions = src.current()["Regions"]
            assert sorted(regions) == ["900", "901", "999"]
            assert regions["900"]["RegionCode"] == "file"
            assert regions["900"]["Nodes"][0]["STUNPort"] == 3478
            assert regions["901"]["RegionCode"] == "url1"  # urls after paths
            assert regions["999"]["RegionCode"] == "trioscale"  # the embedded region wins
            assert regions["999"]["Nodes"][0]["HostName"] == "127.0.0.1"

            content["body"] = json.dumps({"Regions": {"901": region(901, "url2"), "902": region(902, "new")}})
            while not changes:
                await trio.sleep(0.05)
            assert sorted(changes[-1]["Regions"]) == ["900", "901", "902", "999"]
            assert changes[-1]["Regions"]["901"]["RegionCode"] == "url2"

            # A failing source keeps its last good regions; nothing changes, nobody is told.
            content["status"], content["body"] = 500, "oops"
            n = len(changes)
            await trio.sleep(2.5)
            assert len(changes) == n and "902" in src.current()["Regions"]
        nursery.cancel_scope.cancel()


async def test_unreachable_url_at_start_leaves_it_out(tmp_path):
    cfg = make_cfg(tmp_path, derp={"urls": ["https://127.0.0.1:1/derpmap"], "auto_update_enabled": False})
    src = DerpMapSource(cfg)
    with trio.fail_after(20):
        await src.refresh()
    assert sorted(src.current()["Regions"]) == ["999"]


def test_derp_map_change_is_a_delta_with_only_the_map():
    bus = ChangeBus()
    h = bus.open(7)
    bus.part_changed("derp")  # what serve.py gives DerpMapSource.run as on_change
    pending = h.pending.take()
    assert pending.parts == {"derp"} and not pending.everything and h.pending.empty()

    class FakeTailnet:
        nodes = {7: object()}
        version: dict = {}
        on_node_removed: list = []

    mapper = Mapper(FakeTailnet(), base_domain="ts.test", dns_config=lambda: None,
                    derp_map=lambda: {"Regions": {"999": region(999, "x")}})
    msg = mapper.delta(SessionView(7), pending)
    assert msg == {"DERPMap": {"Regions": {"999": region(999, "x")}}}
    assert mapper.delta(SessionView(7), Pending()) is None


def test_mesh_with_needs_a_mesh_key(tmp_path):
    with pytest.raises(ConfigError, match="derp.server.mesh_with"):
        make_cfg(tmp_path, derp={"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0",
                                            "mesh_with": ["https://derp2.example:443"]}})
    (tmp_path / "mk").write_text("ab" * 32)
    cfg = make_cfg(tmp_path, derp={"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:0",
                                              "mesh_key_path": str(tmp_path / "mk"),
                                              "mesh_with": ["https://derp2.example:443"]}})
    assert cfg.derp.mesh_with == ("https://derp2.example:443",)


def test_trioscale_derp_runs_the_standalone_server(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "appliance", "derp", "--help"], cwd=repo,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--mesh-with" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "appliance", "derp", "-a", "127.0.0.1:0",
                          "--key-file", str(tmp_path / "k")], cwd=repo, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "TLS needs" in bad.stderr
