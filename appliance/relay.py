"""The embedded DERP relay and STUN responder, and the DERP map clients are given.

The relay shares the front door's listener (``/derp`` and its side endpoints); STUN gets its
own UDP socket. The DERP map is the embedded region (when on) merged with the regions of the
files in ``derp.paths``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import h11
import trio
import yaml

from derp.server import DerpServer
from derp.stun import StunStats, serve_stun

from .config import Config, ConfigError, split_host_port
from .http.server import Answer
from .keys import load_or_create_private_key
from .tailnet.model import Tailnet

log = logging.getLogger(__name__)


def make_relay(cfg: Config, tailnet: Tailnet) -> DerpServer:
    key = load_or_create_private_key(cfg.derp.private_key_path)

    async def verify(node_public: bytes) -> bool:
        # Only nodes of this tailnet whose key is still valid may use the relay.
        n = tailnet.node_by_key("nodekey:" + node_public.hex())
        return n is not None and not tailnet.is_expired(n)

    return DerpServer(key, verify_client=verify if cfg.derp.verify_clients else None)


def relay_routes(relay: DerpServer):
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


def load_derp_file(path: Path) -> dict:
    """A DERP map file (JSON or YAML, Tailscale's DERPMap shape, or Headscale's lower-case
    ``regions`` layout). Raises ConfigError naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"derp.paths: cannot read {path}: {e}") from None
    regions = (data or {}).get("Regions") or (data or {}).get("regions")
    if not isinstance(regions, dict):
        raise ConfigError(f"derp.paths: {path} has no Regions mapping")
    out = {}
    for rid, region in regions.items():
        if not isinstance(region, dict):
            raise ConfigError(f"derp.paths: {path}: region {rid} is not a mapping")
        out[str(int(rid))] = _normalise(region)
    return out


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
    def __init__(self, cfg: Config) -> None:
        regions: dict[str, dict] = {}
        for p in cfg.derp.paths:
            regions.update(load_derp_file(p))
        if cfg.derp.server_enabled and cfg.derp.automatically_add_embedded_derp_region:
            regions[str(cfg.derp.region_id)] = embedded_region(cfg)
        self._map = {"Regions": regions}
        self.version = 1

    def current(self) -> dict:
        return self._map


async def run_stun(cfg: Config, stats: StunStats, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    host, port = split_host_port(cfg.derp.stun_listen_addr)
    await serve_stun(host or "::", port, stats=stats, task_status=task_status)



