"""The embedded DERP relay and STUN responder, and the DERP map clients are given.

The relay shares the front door's listener (``/derp`` and its side endpoints); STUN gets its
own UDP socket. TLS on that listener is the relay's TLSStream (batched records, see
derp/tls.py) when the relay is on. With ``derp.server.workers`` above 1 the relay runs in
worker processes (derp.workers): a plain connection's ``/derp`` upgrade is handed to one by the
front door, and with TLS every connection is (TLS is then done by the workers, which pass
whatever is not DERP back to the front door here; acme-tls/1 validations never leave this
process). The DERP map is, as in Headscale, the regions of the files in ``derp.paths``,
then those of the maps at ``derp.urls`` (a later source wins for a region ID), then the
embedded region (when on). With ``derp.auto_update_enabled`` the sources are read again every
``derp.update_frequency``; a changed map goes to every open map stream as a delta that carries
only the new DERPMap.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import h11
import trio
import yaml

import autocert
from autocert.acceptor import ReplayStream
from autocert.clienthello import ClientHelloReader
from autocert.tlsconfig import ACME_TLS_ALPN, cert_info, split_pem_chain
from derp.server import DerpServer
from derp.stun import StunStats, serve_stun
from derp.tls import TLSStream, relay_context
from derp.workers import WorkerPool, default_workers

from .config import Config, ConfigError, split_host_port
from .config.yamlfile import BoundedComposer
from .http.server import Answer
from .keys import load_or_create_private_key
from .outbound import FetchError, fetch
from .supervise import Supervisor

log = logging.getLogger(__name__)

Relay = DerpServer | WorkerPool
Handler = Callable[[trio.abc.Stream], Awaitable[None]]

# A client gets this long to send its ClientHello before its connection is handed over.
HELLO_TIMEOUT = 10.0
# While the certificate files do not hold the served certificate, look again this often.
FILES_RECHECK = 1.0


def relay_workers(cfg: Config) -> int:
    """Worker processes for the relay: ``derp.server.workers``, or one per core."""
    return cfg.derp.workers or default_workers()


def make_relay(cfg: Config, verify: Callable[[bytes], Awaitable[bool]], front_door: Handler | None = None) -> Relay:
    """The embedded relay: a DerpServer, or with several workers a WorkerPool whose workers
    give back to ``front_door`` the connections that are not DERP. ``verify`` says whether a
    node key may use it (``derp.server.verify_clients``). Raises ConfigError."""
    key = load_or_create_private_key(cfg.derp.private_key_path)
    if urlsplit(cfg.server_url).scheme != "https":
        # Clients dial DERP over TLS only (TS_DEBUG_USE_DERP_HTTP=1 aside).
        log.warning("server_url is not https: clients will not be able to use the embedded DERP relay")
    mesh_key = None
    if cfg.derp.mesh_key_path is not None:
        try:
            mesh_key = Path(cfg.derp.mesh_key_path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"derp.server.mesh_key_path: cannot read it: {e}", key="derp.server.mesh_key_path") from None

    workers = relay_workers(cfg)
    try:
        if workers > 1:
            if front_door is None:
                raise ValueError("a relay on workers needs the front door")
            return WorkerPool(
                key, workers=workers, verify_client=verify if cfg.derp.verify_clients else None,
                mesh_key=mesh_key, mesh_with=cfg.derp.mesh_with, front="proxy",
                on_proxy=front_door, log_level=cfg.log.level_no, log_format=cfg.log.format,
            )
        return DerpServer(
            key, verify_client=verify if cfg.derp.verify_clients else None,
            mesh_key=mesh_key, mesh_with=cfg.derp.mesh_with,
        )
    except ValueError as e:  # a malformed mesh key
        raise ConfigError(f"derp.server.mesh_key_path: {e}", key="derp.server.mesh_key_path") from None


async def start_relay(cfg: Config, relay: Relay, certs: object, public: Handler,
                      front_door: Handler, nursery: trio.Nursery, supervisor: Supervisor) -> Handler:
    """Start ``relay`` in ``nursery`` and return the main listener's connection handler.

    Without TLS that is ``public`` (the front door), which hands /derp upgrades over to the
    relay (relay_routes). With TLS it is :func:`_tls_front`'s: TLS for the relay's own batched
    TLSStream instead of trio.SSLStream, in a worker or here.

    Call it after the certificates were loaded and before the listener opens. The relay runs
    under ``supervisor``. It does not wait for the workers to be up (a connection waits for one instead): an ACME validation may come
    as soon as the certificate manager runs, and the listener must be there to answer it.
    """
    # Not waited for; a failure, even before it is up, is restarted by the supervisor.
    nursery.start_soon(supervisor.run, "DERP relay", relay.run)
    if certs is None:
        return public
    return _tls_front(cfg, certs, relay, public, front_door)


def _certificate_files(cfg: Config, certs: object) -> tuple[str, str]:
    if isinstance(certs, autocert.StaticCertificate):
        return certs.cert_path, certs.key_path
    assert isinstance(certs, autocert.CertManager)
    # The manager's cache layout (autocert/cache.py): <hostname>.crt and <hostname>.key.
    base = os.path.join(cfg.tls.letsencrypt_cache_dir, certs.hostname)
    return base + ".crt", base + ".key"


def _file_serial(path: str) -> str | None:
    """The serial (hex, as status() gives it) of the leaf in a chain file; None if unreadable."""
    try:
        with open(path, "rb") as f:
            return format(cert_info(split_pem_chain(f.read())[0]).serial, "x")
    except (OSError, autocert.CertificateError):
        return None


def _tls_front(cfg: Config, certs, relay: Relay, public: Handler, front_door: Handler) -> Handler:
    """The main listener's handler with TLS: read the ClientHello; an acme-tls/1 validation
    goes to ``public`` (the certificate manager answers it); any other connection goes to a
    worker, TLS and all, or with the relay in this process is terminated here with a TLSStream
    and served by ``front_door`` (DERP sessions then write batched TLS records, as in a worker).
    """
    # The certificate context the workers were last given, and when the files were last found
    # not to hold the served certificate.
    given: list = [None, -math.inf]

    async def workers_hold(ctx: ssl.SSLContext) -> bool:
        if ctx is not given[0] and trio.current_time() - given[1] > FILES_RECHECK:
            # New (first, or renewed). The workers load it from the files, which the manager
            # writes just after it starts serving a new one: only once they hold it.
            files = _certificate_files(cfg, certs)
            if await trio.to_thread.run_sync(_file_serial, files[0]) == certs.status()["serial"]:
                given[0] = ctx
                # Loaded before any connection handed after this: the same channel, in order.
                await relay.set_certificate(*files)  # type: ignore[union-attr]
            else:
                given[1] = trio.current_time()
        return ctx is given[0]

    async def serve_tls(tcp: trio.abc.Stream) -> None:
        reader = ClientHelloReader()
        hello = None
        deadline = trio.current_time() + HELLO_TIMEOUT  # for the ClientHello and the handshake
        try:
            with trio.fail_at(deadline):
                while hello is None:
                    data = await tcp.receive_some(4096)
                    if not data:
                        raise autocert.ClientHelloError("closed before a ClientHello")
                    hello = reader.receive_data(data)
        except (autocert.ClientHelloError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError) as e:
            log.debug("tls: no usable ClientHello: %r", e)
            await trio.aclose_forcefully(tcp)
            return
        if ACME_TLS_ALPN in hello.alpn_protocols and certs.challenge_context(hello.server_name):
            await public(ReplayStream(reader.data, tcp))
            return
        ctx = certs.current_context()
        if ctx is None:
            log.warning("tls: no certificate yet for %s; closing", hello.server_name)
            await trio.aclose_forcefully(tcp)
            return
        if isinstance(relay, WorkerPool) and await workers_hold(ctx):
            await relay.hand_raw(tcp, reader.data, tls=True)  # type: ignore[arg-type]
            return
        # Here (meanwhile, with workers: what is not DERP is served, a /derp upgrade fails).
        try:
            with trio.fail_at(deadline):
                stream = await TLSStream.accept(tcp, relay_context(ctx),  # type: ignore[arg-type]
                                                prefix=reader.data)
        except (trio.BrokenResourceError, trio.TooSlowError) as e:
            log.debug("tls: handshake failed: %r", e)
            return  # (accept closed tcp)
        await front_door(stream)

    return serve_tls


def relay_routes(relay: Relay):
    """(plain route, upgrade route) for the front door."""

    async def plain(req: h11.Request, body: bytes) -> Answer | None:
        got = relay.handle_plain_http(req.method.decode(), req.target.decode("latin-1"), list(req.headers))
        if got is None:
            return None
        status, headers, payload = got
        return status, [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], payload

    async def upgrade(stream: trio.abc.Stream, req: h11.Request, leftover: bytes) -> None:
        await relay.handle_upgrade(stream, req.method.decode(), req.target.decode("latin-1"), list(req.headers), leftover)

    return plain, upgrade


def embedded_region(cfg: Config) -> dict:
    url = urlsplit(cfg.server_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)
    stun_port = -1
    if cfg.derp.stun_listen_addr:
        stun_port = split_host_port(cfg.derp.stun_listen_addr)[1]
    node = {
        "Name": f"{cfg.derp.region_id}a",
        "RegionID": cfg.derp.region_id,
        "HostName": host,
        "DERPPort": port,
        "STUNPort": stun_port,
    }
    if cfg.derp.ipv4:
        node["IPv4"] = cfg.derp.ipv4
    if cfg.derp.ipv6:
        node["IPv6"] = cfg.derp.ipv6
    return {
        "RegionID": cfg.derp.region_id,
        "RegionCode": cfg.derp.region_code,
        "RegionName": cfg.derp.region_name,
        "Nodes": [node],
    }


# A DERP map larger than this is not one (Tailscale's default map is about 20 KiB).
MAX_DERP_MAP_BYTES = 4 << 20
FETCH_TIMEOUT = 15.0


class _MapLoader(BoundedComposer, yaml.SafeLoader):
    """YAML 1.1 as before, with the config reader's bounds on depth and alias expansion."""


def load_derp_file(path: Path) -> dict:
    """A DERP map file (JSON or YAML, Tailscale's DERPMap shape, or Headscale's lower-case
    ``regions`` layout). Raises ConfigError naming the file."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_DERP_MAP_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"derp.paths: cannot read {path}: {e}") from None
    if len(data) > MAX_DERP_MAP_BYTES:
        raise ConfigError(f"derp.paths: {path}: more than {MAX_DERP_MAP_BYTES} bytes")
    return parse_derp_map(data, f"derp.paths: {path}")


def parse_derp_map(text: str | bytes, where: str) -> dict:
    """The regions of a DERP map document, by decimal region ID. Raises ConfigError when the
    document is not one, or a field has a type the client would refuse (a map the client
    cannot read would break every node's netmap)."""
    try:
        data = yaml.load(text, Loader=_MapLoader)  # noqa: S506 - SafeLoader subclass; YAML is a superset of JSON
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:  # also text that is not UTF-8
        raise ConfigError(f"{where}: not JSON or YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: not a DERP map")
    regions = data.get("Regions") or data.get("regions")
    if not isinstance(regions, dict):
        raise ConfigError(f"{where}: has no Regions mapping")
    out = {}
    for rid, region in regions.items():
        if not isinstance(region, dict):
            raise ConfigError(f"{where}: region {rid} is not a mapping")
        if isinstance(rid, bool) or not isinstance(rid, (int, str)) or not str(rid).strip().isdigit():
            raise ConfigError(f"{where}: region ID {rid!r} is not a number")
        region = _normalise(region)
        problem = _check_region(region)
        if problem:
            raise ConfigError(f"{where}: region {rid}: {problem}")
        out[str(int(rid))] = region
    return out


# The DERPMap fields' Go types (tailcfg.DERPRegion, DERPNode), as the client decodes them.
_REGION_TYPES = {"RegionID": int, "RegionCode": str, "RegionName": str, "Avoid": bool,
                 "NoMeasureNoHome": bool, "Latitude": float, "Longitude": float, "Nodes": list}
_NODE_TYPES = {"Name": str, "RegionID": int, "HostName": str, "CertName": str, "IPv4": str, "IPv6": str,
               "STUNPort": int, "STUNOnly": bool, "DERPPort": int, "InsecureForTests": bool,
               "STUNTestIP": str, "CanPort80": bool}


def _type_problem(obj: dict, types: dict, what: str) -> str | None:
    for key, want in types.items():
        if key not in obj or obj[key] is None:
            continue
        value = obj[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if want is float
              else isinstance(value, want) and (want is bool or not isinstance(value, bool)))
        if not ok:
            return f"{what}{key} is {type(value).__name__}, not {want.__name__}"
    return None


def _check_region(region: dict) -> str | None:
    problem = _type_problem(region, _REGION_TYPES, "")
    if problem:
        return problem
    for i, node in enumerate(region.get("Nodes") or ()):
        if not isinstance(node, dict):
            return f"Nodes[{i}] is not a mapping"
        problem = _type_problem(node, _NODE_TYPES, f"Nodes[{i}].")
        if problem:
            return problem
    return None


def fetch_derp_map(url: str, ssl_context: ssl.SSLContext | None = None) -> dict:
    """GET a DERP map (blocking: run it in a worker thread). Raises ConfigError naming the URL.

    https certificates are checked against the system trust store (``SSL_CERT_FILE`` works)
    unless ``ssl_context`` says otherwise.
    """
    try:
        got = fetch(url, headers={"Accept": "application/json"}, limit=MAX_DERP_MAP_BYTES,
                    timeout=FETCH_TIMEOUT, ssl_context=ssl_context)
    except FetchError as e:
        raise ConfigError(f"derp.urls: cannot fetch {e}") from None
    if got.status != 200:
        raise ConfigError(f"derp.urls: cannot fetch {url}: HTTP Error {got.status}")
    return parse_derp_map(got.body, f"derp.urls: {url}")


_NAMES = {k.lower(): k for k in (
    "RegionID", "RegionCode", "RegionName", "Nodes", "Avoid", "NoMeasureNoHome", "Latitude", "Longitude",
    "Name", "HostName", "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly", "DERPPort",
    "InsecureForTests", "STUNTestIP", "CanPort80",
)}


def _normalise(obj):
    """Headscale's YAML uses lower-case keys (regionid, hostname); the client wants Go's."""
    if isinstance(obj, dict):
        return {_NAMES.get(str(k).lower(), k): _normalise(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalise(v) for v in obj]
    return obj


class DerpMapSource:
    """The DERP map every netmap carries; ``current()`` is cheap (called per map message).

    Args:
        cfg: the configuration (``derp.*``).
        ssl_context: for fetching ``derp.urls`` (default: the system trust store).

    A source that fails (unreadable file, unreachable URL) is logged and left out; the other
    sources still count. On a periodic update, a source that fails keeps its previous regions,
    so a network hiccup does not take relays away from the clients.
    """

    def __init__(self, cfg: Config, ssl_context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        self.ssl_context = ssl_context
        self._last: dict[str, dict[str, dict]] = {}  # source → its last good regions
        self.api_regions: dict[str, dict] = {}  # regions added through the admin API
        self._map: dict = {"Regions": self._merge()}
        self.version = 1
        self.updates = 0  # how many times the map changed after start

    def current(self) -> dict:
        return self._map

    def _merge(self) -> dict[str, dict]:
        regions: dict[str, dict] = {}
        for source in [*map(str, self.cfg.derp.paths), *self.cfg.derp.urls]:
            regions.update(self._last.get(source, {}))
        regions.update(self.api_regions)
        if self.cfg.derp.server_enabled and self.cfg.derp.automatically_add_embedded_derp_region:
            regions[str(self.cfg.derp.region_id)] = embedded_region(self.cfg)
        return regions

    def set_api_regions(self, regions: dict[str, dict]) -> bool:
        """Regions from the admin API (after files and URLs); True when the map changed."""
        self.api_regions = regions
        return self._remerge()

    def _remerge(self) -> bool:
        merged = {"Regions": self._merge()}
        if merged == self._map:
            return False
        self._map = merged
        self.version += 1
        return True

    async def refresh(self) -> bool:
        """Read every source again; True when the merged map changed."""
        for p in self.cfg.derp.paths:
            try:
                self._last[str(p)] = load_derp_file(p)
            except ConfigError as e:
                log.error("%s", e)
        for url in self.cfg.derp.urls:
            try:
                self._last[url] = await trio.to_thread.run_sync(
                    fetch_derp_map, url, self.ssl_context, abandon_on_cancel=True,
                )
            except ConfigError as e:
                log.error("%s", e)
        return self._remerge()

    async def run(self, on_change: Callable[[], None], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the sources, report started, then (with auto-update) re-read them every
        ``update_frequency`` and call ``on_change`` when the map changed. Runs until cancelled."""
        await self.refresh()
        log.info("DERP map: regions %s", ", ".join(sorted(self._map["Regions"], key=int)) or "none")
        task_status.started()
        if not self.cfg.derp.auto_update_enabled or not (self.cfg.derp.urls or self.cfg.derp.paths):
            return
        period = self.cfg.derp.update_frequency.total_seconds()
        while True:
            await trio.sleep(period)
            if await self.refresh():
                self.updates += 1
                log.info("DERP map changed: regions %s", ", ".join(sorted(self._map["Regions"], key=int)))
                on_change()


async def run_stun(cfg: Config, stats: StunStats, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = split_host_port(cfg.derp.stun_listen_addr)
    await serve_stun(host or "::", port, stats=stats, task_status=task_status)
