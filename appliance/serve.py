"""``trioscale serve``: one root nursery owns every listener and service.

Every long-running task runs under the Supervisor (supervise.py): a runtime fault restarts that
task, never ends the process. The process ends on a signal, or when the database fails
(StoreFailed), and says why. A fault before the server is up is a CannotStart with what to fix.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

import trio

from .admin.api import AdminAPI
from .admin.backup import backup_route
from .admin.runtime import RuntimeSettings
from .certdns.zone import CertZone
from .config import Config, ConfigError, split_host_port
from .control.dnsconfig import DNSConfigSource
from .control.loginpage import login_page_route
from .control.mapper import Mapper
from .control.service import ControlService
from .http.frontdoor import FrontDoor
from .http.limits import ConnectionGate
from .http.listeners import BatchListener
from .http.server import HTTPServer
from .keys import KeyFormatError, load_or_create_private_key
from .policy import PolicyError
from derp.stun import StunStats

from .metrics import Sources, serve_metrics
from .oidc.provider import ProviderError, make_provider
from .oidc.settings import oidc_settings
from .oidc.web import SignIn
from .relay import DerpMapSource, make_relay, relay_routes, run_stun, start_relay
from .storage import Store
from .storage.store import StoreError, StoreFailed
from .supervise import Supervisor
from .tailnet.haprobe import HAProber
from .tailnet.housekeeping import run_housekeeping
from .tailnet.model import Tailnet
from .tailnet.policy import PolicyManager
from .tlsserve import certificate_source, start_tls

log = logging.getLogger(__name__)

# Exit statuses of `trioscale serve` (README, "Running it"): systemd restarts on each but 0.
EXIT_STOPPED = 0  # stopped by SIGTERM or SIGINT
EXIT_CANNOT_START = 1  # the configuration or the machine must be fixed first
EXIT_STORE_FAILED = 3  # the database failed while running
EXIT_INTERNAL_ERROR = 70  # a bug escaped supervision (EX_SOFTWARE)

GC_THRESHOLDS = (20_000, 10, 10)  # CPython's defaults are (700, 10, 10)


class CannotStart(Exception):
    """The server could not start; the message says what to fix."""


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
    supervisor: Supervisor | None = None


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


async def serve_tcp(what: str, addr: str, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``addr`` (the config key ``what``) and serve each connection with ``handler``.
    ``task_status.started`` gets the bound ports. The listeners are opened anew on every
    (supervised) start: trio.serve_listeners closes them when it fails."""
    host, port = split_host_port(addr)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as e:
        raise ConfigError(f"{what} {addr}: cannot listen: {e.strerror or e}; free the port or change {what}",
                          key=what) from None
    task_status.started(sorted({ln.socket.getsockname()[1] for ln in listeners}))
    await trio.serve_listeners(handler, [BatchListener(ln) for ln in listeners])


async def serve_unix(path: Path, mode: int, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The admin socket, bound anew on every (supervised) start."""
    listener = await open_unix_listener(path, mode)
    task_status.started()
    await trio.serve_listeners(handler, [listener])


async def serve(cfg: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until cancelled. ``task_status.started`` gets a ``Running``.

    Raises what stopped it before it was up (see CannotStart), and StoreFailed when the
    database fails while it runs; nothing else ends it.
    """
    store = Store(cfg.database.sqlite_path)
    bound_socket = False
    tailnet: Tailnet | None = None
    supervisor = Supervisor(fatal=(StoreFailed,))
    try:
        noise_key = load_or_create_private_key(cfg.noise_private_key_path)
        tailnet = Tailnet(
            store, v4=cfg.prefixes.v4, v6=cfg.prefixes.v6, allocation=cfg.prefixes.allocation,
            node_expiry=cfg.node.expiry, approval_required=cfg.node.approval_required,
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
        control.ssh.check_period = (
            lambda src, dst: policy.engine.ssh_check_period(src, dst) if policy.engine is not None else None)
        front = FrontDoor(noise_key, control)
        sign_in = await _start_oidc(cfg, control)
        front.plain_routes.append(login_page_route(control, sign_in.handler if sign_in else lambda: None))
        if sign_in is not None:
            front.plain_routes.append(sign_in.route)
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

        admin.plain_routes.insert(0, backup_route(store, Path(cfg.database.sqlite_path).parent))
        sup = supervisor.start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_store_fails, store)
            await sup(nursery, "soft-state flusher", tailnet.run_flusher)
            await sup(nursery, "DERP map refresh", derp_maps.run, lambda: tailnet.bus.part_changed("derp"))
            await sup(nursery, "API keys and settings", api.run)
            # Certificates before listeners: a cached one is served from the first connection.
            public = await start_tls(cfg, certs, nursery, front.handle, supervisor)
            if relay is not None:  # and the relay's workers, which may take the connections
                public = await start_relay(cfg, relay, certs, public, front.handle, nursery, supervisor)
            # Caps before TLS: a refused connection costs no handshake.
            gate = ConnectionGate(cfg.limits.max_connections, cfg.limits.max_connections_per_source,
                                  exempt=cfg.trusted_proxies)
            public = gate.wrap(public)
            ports = await sup(nursery, "listener " + cfg.listen_addr, serve_tcp, "listen_addr", cfg.listen_addr,
                              public)
            await sup(nursery, "admin socket", serve_unix, cfg.unix_socket, cfg.unix_socket_permission, admin.handle)
            bound_socket = True
            await sup(nursery, "housekeeping", run_housekeeping, tailnet, cfg.node.ephemeral_inactivity_timeout)
            await sup(nursery, "policy file watcher", policy.watch_file)
            await sup(nursery, "route auto-approver", policy.run_auto_approver)
            await sup(nursery, "policy recompiler", policy.run_recompiler)
            await sup(nursery, "HA route prober", prober.run)
            await sup(nursery, "DNS records watcher", dns.watch)
            dns_port = await sup(nursery, "certificate DNS zone", zone.run) if zone is not None else None
            if sign_in is not None and not sign_in.provider.ready:
                await sup(nursery, "OIDC discovery", sign_in.provider.keep_discovering)
            if relay is not None:
                if cfg.derp.stun_listen_addr:
                    await sup(nursery, "STUN", run_stun, cfg, stun_stats)
            metrics_port = None
            if cfg.metrics_listen_addr:
                sources = Sources(
                    nodes=lambda: len(tailnet.nodes), online_nodes=lambda: len(tailnet.online),
                    noise_connections=lambda: front.noise_connections, relay=relay,
                    stun=stun_stats if relay is not None and cfg.derp.stun_listen_addr else None,
                    tasks=supervisor.tasks,
                )
                metrics_port = await sup(nursery, "metrics", serve_metrics, cfg.metrics_listen_addr, sources)
            log.info(
                "trioscale serving %s on %s (admin socket %s, %d nodes, %d users)",
                cfg.server_url, cfg.listen_addr, cfg.unix_socket, len(tailnet.nodes), len(tailnet.users),
            )
            task_status.started(Running(cfg, tailnet, control, policy, front, ports, nursery.cancel_scope,
                                        metrics_port, certs, zone, dns_port, api, supervisor))
    finally:
        with trio.CancelScope(shield=True):
            if bound_socket:  # never another running server's socket
                try:
                    Path(cfg.unix_socket).unlink(missing_ok=True)
                except OSError:
                    pass
            if tailnet is not None and store.failure is None:
                with trio.move_on_after(5):
                    try:
                        await tailnet.flush_soft_state()
                    except StoreError as e:
                        log.error("soft state (last seen, endpoints) not written at shutdown: %s", e)
            store.close()


async def _stop_when_store_fails(store: Store) -> None:
    raise await store.wait_failed()


def leaves(exc: BaseException):
    """The exceptions inside ``exc``'s (nested) groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from leaves(e)
    else:
        yield exc


OIDC_START_TIMEOUT = 15.0


async def _start_oidc(cfg: Config, control: ControlService) -> SignIn | None:
    """Sign-in through the identity provider, if oidc.issuer is set. A provider that cannot be
    reached stops the start with oidc.only_start_if_oidc_is_available (Headscale's default);
    otherwise the server serves, says so, and keeps trying (the login page then shows the
    admin's command)."""
    settings = oidc_settings(cfg)
    if settings is None:
        return None
    provider = make_provider(settings, settings.redirect_uri(cfg.server_url))
    try:
        with trio.fail_after(OIDC_START_TIMEOUT):
            await provider.discover()
    except (ProviderError, trio.TooSlowError) as e:
        reason = str(e) or "no answer in time"
        if settings.only_start_if_available:
            raise ConfigError(f"oidc.issuer: {settings.issuer} is unavailable ({reason}); set "
                              "oidc.only_start_if_oidc_is_available: false to serve without it", key="oidc.issuer")
        provider.last_error = reason
        log.warning("OIDC provider %s is unavailable (%s): serving anyway, sign-in waits for it; retrying",
                    settings.issuer, reason)
    else:
        log.info("OIDC sign-in through %s (redirect URI %s)", settings.issuer, provider.redirect_uri)
    return SignIn(settings, provider, control, cfg.server_url)


async def serve_until_signalled(cfg: Config) -> None:
    """The process's main: serve, reload the policy on SIGHUP, stop on SIGINT or SIGTERM.

    Raises CannotStart (what to fix) when the server cannot start, StoreFailed when the
    database fails while it runs.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            try:
                running: Running = await nursery.start(serve, cfg)
            except BaseException as exc:
                errors = list(leaves(exc))
                known = (ConfigError, PolicyError, StoreError, OSError, KeyFormatError)
                if errors and all(isinstance(e, known) for e in errors):
                    raise CannotStart("; ".join(str(e) for e in errors)) from None
                raise
            # What exists now (modules, the loaded tailnet) lives as long as the process: kept
            # out of the collector's full passes, whose pauses grow with what they walk.
            gc.collect()
            gc.freeze()
            # Young collections rarer, so that what lives a second (a session's pending changes)
            # is more often gone before it is examined and promoted; every promotion brings the
            # next full pass closer.
            gc.set_threshold(*GC_THRESHOLDS)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, reloading the policy")
                    try:
                        await running.policy.reload()
                    except Exception:  # a reload never ends the server; the old policy stays
                        log.exception("policy reload failed; the previous policy stays")
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                running.tailnet.stopping = True
                # A thousand cancelled connections leave cycles whose collection only delays
                # the exit (seconds at that size); the process is ending.
                gc.disable()
                nursery.cancel_scope.cancel()
                break
