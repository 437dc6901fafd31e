"""``trioscale serve``: the supervisor. One root nursery owns every listener and service."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import trio

from .admin.api import AdminAPI
from .certdns.zone import CertZone
from .admin.runtime import RuntimeSettings
from .config import Config, split_host_port
from .control.dnsconfig import DNSConfigSource
from .control.loginpage import login_page_route
from .control.mapper import Mapper
from .control.service import ControlService
from .http.frontdoor import FrontDoor
from .http.limits import ConnectionGate
from .http.listeners import BatchListener
from .http.server import HTTPServer
from .keys import load_or_create_private_key
from derp.stun import StunStats

from .metrics import Sources, serve_metrics
from .relay import DerpMapSource, make_relay, relay_routes, run_stun, start_relay
from .storage import Store
from .tailnet.haprobe import HAProber
from .tailnet.housekeeping import run_housekeeping
from .tailnet.model import Tailnet
from .tailnet.policy import PolicyManager
from .tlsserve import certificate_source, start_tls

log = logging.getLogger(__name__)


@dataclass
class Running:
    """What ``serve`` hands its starter: the live parts, for tests and the supervisor."""

    config: Config
    tailnet: Tailnet
    control: ControlService
    policy: PolicyManager
    front: FrontDoor
    ports: list[int]
    cancel_scope: trio.CancelScope
    metrics_port: int | None = None
    certs: object = None  # the autocert source (CertManager / StaticCertificate), None without TLS
    cert_zone: CertZone | None = None  # dns.certificates
    dns_port: int | None = None  # where the embedded authoritative DNS server listens
    api: object = None  # the admin API (AdminAPI)


async def open_unix_listener(path: Path, mode: int) -> trio.SocketListener:
    """Bind the admin socket; a stale socket file from a dead server is replaced, a live one
    means another server runs and is an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left over from a crash
        else:
            raise OSError(f"another trioscale is already serving on {path}")
        finally:
            probe.close()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, mode)
    sock.listen(128)
    return trio.SocketListener(sock)


async def serve(cfg: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until cancelled. ``task_status.started`` gets a ``Running``."""
    store = Store(cfg.database.sqlite_path)
    bound_socket = False
    try:
        noise_key = load_or_create_private_key(cfg.noise_private_key_path)
        tailnet = Tailnet(
            store, v4=cfg.prefixes.v4, v6=cfg.prefixes.v6, allocation=cfg.prefixes.allocation,
            node_expiry=cfg.node.expiry,
        )
        await tailnet.load()
        dns = DNSConfigSource(cfg.dns, lambda: tailnet.bus.part_changed("dns"))
        derp_maps = DerpMapSource(cfg)
        mapper = Mapper(
            tailnet, base_domain=cfg.dns.base_domain or "invalid", dns_config=dns.current,
            derp_map=derp_maps.current, certificates=cfg.dns.certificates.enabled,
        )
        policy = PolicyManager(
            tailnet, lambda access: setattr(mapper, "access", access), mode=cfg.policy.mode,
            path=cfg.policy.path, server_url=cfg.server_url,
        )
        await policy.load()
        control = ControlService(tailnet, mapper, cfg.server_url)
        prober = HAProber(
            tailnet, cfg.server_url, cfg.node.routes_ha_probe_interval.total_seconds(),
            cfg.node.routes_ha_probe_timeout.total_seconds(),
        )
        control.ping_answered = prober.answer
        control.tag_permitted = lambda uid, tag: policy.engine is not None and policy.engine.owns_tag(uid, tag)
        zone = CertZone(cfg.dns.certificates, cfg.dns.base_domain) if cfg.dns.certificates.enabled else None
        control.set_dns.zone = zone
        front = FrontDoor(noise_key, control)
        front.plain_routes.append(login_page_route(control))
        relay = None
        if cfg.derp.server_enabled:
            relay = make_relay(cfg, tailnet, front.handle)
            derp_plain, derp_upgrade = relay_routes(relay)
            front.plain_routes.append(derp_plain)
            front.upgrade_routes["/derp"] = derp_upgrade
        certs = certificate_source(cfg)  # ConfigError for unusable certificate files
        runtime = RuntimeSettings(store, cfg, dns, derp_maps, lambda: tailnet.bus.part_changed("derp"),
                                  clock=tailnet.clock)
        api = AdminAPI(tailnet, control, policy, certs=certs, zone=zone, runtime=runtime, config=cfg)
        admin = HTTPServer("admin")
        admin.plain_routes.append(api)
        front.plain_routes.append(api.public_route())
        stun_stats = StunStats()

        async with trio.open_nursery() as nursery:
            await nursery.start(derp_maps.run, lambda: tailnet.bus.part_changed("derp"))
            await nursery.start(api.run)  # API keys and settings stored through the API
            # Certificates before listeners: a cached one is served from the first connection.
            public = await start_tls(cfg, certs, nursery, front.handle)
            if relay is not None:  # and the relay's workers, which may take the connections
                public = await start_relay(cfg, relay, certs, public, front.handle, nursery)
            # Caps before TLS: a refused connection costs no handshake.
            gate = ConnectionGate(cfg.limits.max_connections, cfg.limits.max_connections_per_source,
                                  exempt=cfg.trusted_proxies)
            public = gate.wrap(public)
            host, port = split_host_port(cfg.listen_addr)
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            ports = sorted({ln.socket.getsockname()[1] for ln in listeners})
            nursery.start_soon(trio.serve_listeners, public, [BatchListener(ln) for ln in listeners])
            unix = await open_unix_listener(cfg.unix_socket, cfg.unix_socket_permission)
            bound_socket = True
            nursery.start_soon(trio.serve_listeners, admin.handle, [unix])
            await nursery.start(run_housekeeping, tailnet, cfg.node.ephemeral_inactivity_timeout)
            await nursery.start(policy.watch_file)
            await nursery.start(policy.run_auto_approver)
            await nursery.start(policy.run_recompiler)
            await nursery.start(prober.run)
            await nursery.start(dns.watch)
            dns_port = await nursery.start(zone.run) if zone is not None else None
            if relay is not None:
                if cfg.derp.stun_listen_addr:
                    await nursery.start(run_stun, cfg, stun_stats)
            metrics_port = None
            if cfg.metrics_listen_addr:
                sources = Sources(
                    nodes=lambda: len(tailnet.nodes), online_nodes=lambda: len(tailnet.online),
                    noise_connections=lambda: front.noise_connections, relay=relay,
                    stun=stun_stats if relay is not None and cfg.derp.stun_listen_addr else None,
                )
                metrics_port = await nursery.start(serve_metrics, cfg.metrics_listen_addr, sources)
            log.info(
                "trioscale serving %s on %s (admin socket %s, %d nodes, %d users)",
                cfg.server_url, cfg.listen_addr, cfg.unix_socket, len(tailnet.nodes), len(tailnet.users),
            )
            task_status.started(Running(cfg, tailnet, control, policy, front, ports, nursery.cancel_scope,
                                        metrics_port, certs, zone, dns_port, api))
    finally:
        with trio.CancelScope(shield=True):
            if bound_socket:  # never another running server's socket
                try:
                    Path(cfg.unix_socket).unlink(missing_ok=True)
                except OSError:
                    pass
            store.close()


async def serve_until_signalled(cfg: Config) -> None:
    """The process's main: serve, reload the policy on SIGHUP, stop on SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(serve, cfg)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, reloading the policy")
                    await running.policy.reload()
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
