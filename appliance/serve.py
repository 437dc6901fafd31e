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
from datetime import datetime, timezone
from pathlib import Path

import trio

from .admin.api import AdminAPI
from .console.sessions import Sessions
from .console.web import Console
from .admin.backup import backup_route
from .admin.runtime import RuntimeSettings
from .audit.actors import Actor, acting
from .audit.journal import ServerJournal, install_journal
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
from .logthrottle import LogThrottle
from .keys import KeyFormatError, encode_key, load_or_create_private_key, public_key
from .policy import PolicyError
from derp.stun import StunStats

from .metrics import Sources, serve_metrics
from .oidc.provider import OIDCProvider, ProviderError, make_provider
from .oidc.settings import OIDCSettings, oidc_settings
from .oidc.web import SignIn
from .relay import DerpMapSource, make_relay, relay_routes, run_stun, start_relay
from .role import Role, server_name
from .storage import KeyMismatch, Lease, LeaseLost, Store, StoreError, StoreFailed, open_store
from .storage.postgres import STANDBY_POLL
from .stats.samples import Sampler, sources_of
from .supervise import Supervisor
from .events.webhooks import Webhooks
from derp.workers import WorkerPool
from .tailnet.haprobe import HAProber
from .tailnet.housekeeping import run_housekeeping
from .tailnet.model import Tailnet
from .tailnet.policy import PolicyManager
from .tlsserve import certificate_source, start_tls

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

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
    role: Role | None = None  # active or standby; the fields above are the first active term's

    def live_tailnet(self) -> Tailnet | None:
        """The tailnet of the term being served now (None on a standby)."""
        if self.role is None:
            return self.tailnet
        return self.role.term.tailnet if self.role.term is not None else None

    def live_policy(self) -> PolicyManager | None:
        """The policy of the term being served now (None on a standby, which loads the policy
        when it takes over)."""
        if self.role is None:
            return self.policy
        return self.role.term.policy if self.role.term is not None else None


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


@dataclass
class ActiveTerm:
    """What a server builds each time it becomes active: the tailnet, loaded from the store,
    and everything that serves it. A term ends when the server stops or loses the lease; the
    next one starts from the database again."""

    tailnet: Tailnet
    control: ControlService
    policy: PolicyManager
    api: AdminAPI
    zone: CertZone | None
    dns_port: int | None
    journal: ServerJournal | None = None  # the audit log and the event hub
    webhooks: Webhooks | None = None


@dataclass
class _Process:
    """The parts that live as long as the process, whatever its role."""

    cfg: Config
    store: Store
    role: Role
    front: FrontDoor
    certs: object
    supervisor: Supervisor
    noise_public: str
    oidc: "_OIDC | None"
    relay: object = None  # the embedded DERP relay (DerpServer or WorkerPool): the samples' relayed bytes


async def serve(cfg: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run the server until cancelled. ``task_status.started`` gets a ``Running``.

    Raises what stopped it before it was up (see CannotStart), and StoreFailed when the
    database fails while it runs; nothing else ends it. With PostgreSQL it may start as a
    standby (role.py) and become active later, and step down again.
    """
    name = server_name(cfg.listen_addr)
    store = open_store(cfg.database, name=name)
    bound_socket = False
    supervisor = Supervisor(fatal=(StoreFailed, LeaseLost))
    role = Role(store, name)
    try:
        noise_key = load_or_create_private_key(cfg.noise_private_key_path)
        noise_public = encode_key("mkey", public_key(noise_key))
        if store.elects:
            await _check_noise_key(store, noise_public, cfg)
        front = FrontDoor(noise_key)
        front.health = role.health_answer
        certs = certificate_source(cfg)  # ConfigError for unusable certificate files
        oidc = await _start_oidc(cfg)
        proc = _Process(cfg, store, role, front, certs, supervisor, noise_public, oidc)

        async def verify(node_public: bytes) -> bool:
            # Only nodes of this tailnet whose key is still valid may use the relay; a
            # standby's relay asks the database.
            key = "nodekey:" + node_public.hex()
            term = role.term
            if term is None:
                return await store.node_key_usable(key, datetime.now(timezone.utc))
            n = term.tailnet.node_by_key(key)
            return n is not None and term.tailnet.is_usable(n)

        relay = None
        if cfg.derp.server_enabled:
            relay = proc.relay = make_relay(cfg, verify, front.handle)
            derp_plain, derp_upgrade = relay_routes(relay)
            front.plain_routes.append(derp_plain)
            front.upgrade_routes["/derp"] = derp_upgrade
        front.plain_routes.append(role.routes("public"))
        admin = HTTPServer("admin")
        admin.plain_routes.append(backup_route(store, _workdir(cfg)))
        admin.plain_routes.append(role.routes("admin"))
        stun_stats = StunStats()
        sup = supervisor.start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_store_fails, store)
            if oidc is not None and not oidc.provider.ready:
                await sup(nursery, "OIDC discovery", oidc.provider.keep_discovering)
            # Active at once when nobody else is (SQLite: always): the tailnet is loaded before
            # the listener opens, as before there were standbys.
            lease = await _try_lease(proc)
            first = await nursery.start(_run_terms, proc, lease) if lease is not None else None
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
            if relay is not None:
                if cfg.derp.stun_listen_addr:
                    await sup(nursery, "STUN", run_stun, cfg, stun_stats)
            metrics_port = None
            if cfg.metrics_listen_addr:
                sources = Sources(
                    nodes=lambda: len(role.term.tailnet.nodes) if role.term else 0,
                    online_nodes=lambda: len(role.term.tailnet.online) if role.term else 0,
                    noise_connections=lambda: front.noise_connections, relay=relay,
                    stun=stun_stats if relay is not None and cfg.derp.stun_listen_addr else None,
                    tasks=supervisor.tasks, active=lambda: role.active,
                    node_states=lambda: node_states(role.term.tailnet) if role.term else {},
                    map_sessions=lambda: sum(role.term.tailnet.online.values()) if role.term else 0,
                    certs=certs, hub=lambda: role.term.journal.hub if role.term else None,
                    audit=lambda: role.term.journal.audit if role.term else None,
                )
                metrics_port = await sup(nursery, "metrics", serve_metrics, cfg.metrics_listen_addr, sources)
            if first is None:
                log.info("trioscale standing by on %s: %s", store.description,
                         "another server is active" if store.elects else "")
                nursery.start_soon(_run_terms, proc, None)
            log.info(
                "trioscale serving %s on %s (admin socket %s, %s, %s)", cfg.server_url, cfg.listen_addr,
                cfg.unix_socket, store.description,
                f"{len(first.tailnet.nodes)} nodes, {len(first.tailnet.users)} users" if first else "standby",
            )
            task_status.started(Running(
                cfg, first.tailnet if first else None, first.control if first else None,
                first.policy if first else None, front, ports, nursery.cancel_scope, metrics_port, certs,
                first.zone if first else None, first.dns_port if first else None, first.api if first else None,
                supervisor, role))
    finally:
        with trio.CancelScope(shield=True):
            if bound_socket:  # never another running server's socket
                try:
                    Path(cfg.unix_socket).unlink(missing_ok=True)
                except OSError:
                    pass
            term = role.term  # the term being served when the server stopped
            if term is not None and store.failure is None:
                with trio.move_on_after(5):
                    try:
                        await term.tailnet.flush_soft_state()
                        if term.journal is not None:
                            await term.journal.audit.flush()
                        if term.webhooks is not None:
                            await term.webhooks.flush_log()
                    except LeaseLost:
                        pass  # another server is active: what it holds is the truth now
                    except StoreError as e:
                        log.error("soft state (last seen, endpoints), audit entries or webhook deliveries not "
                                  "written at shutdown: %s", e)
            store.close()


def _workdir(cfg: Config) -> Path:
    """Where a backup is made before it is sent (beside the SQLite file, or the data dir)."""
    return Path(cfg.database.sqlite_path).parent if cfg.database.type == "sqlite" else Path(cfg.data_dir)


async def _check_noise_key(store: Store, noise_public: str, cfg: Config) -> None:
    """Every server on one database must serve the same Noise key, or clients moved to it
    would not know it: refused at start (CannotStart), before anything is served."""
    stored = await store.noise_public()
    if stored and stored != noise_public:
        raise StoreError(f"{cfg.noise_private_key_path}: this server's Noise key is not the one the tailnet in "
                         f"{store.description} is served with: copy the key file from the server that runs it")


async def _try_lease(proc: _Process) -> Lease | None:
    """One try for the active role. A key that is not the tailnet's (a race the start check
    could not see) ends the server; a database that cannot be reached is one more try later."""
    try:
        return await proc.store.try_become_active(proc.role.name, proc.noise_public)
    except KeyMismatch as e:
        raise StoreFailed(str(e)) from None
    except StoreError as e:
        throttled.warning("standby-try", "standby: cannot take the active role now: %s", e)
        return None


async def _run_terms(proc: _Process, lease: Lease | None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve active terms one after the other: wait for the lease (a standby), serve until it is
    lost, step down, wait again. ``task_status.started`` gets the first term, when ``lease`` is
    given (it must start: its failure is the server's)."""
    store, role = proc.store, proc.role
    first = lease is not None
    while True:
        if lease is None:
            role.become_standby()
            while (lease := await _try_lease(proc)) is None:
                await trio.sleep(STANDBY_POLL)
        try:
            async with trio.open_nursery() as term:
                parts = await term.start(_active_term, proc, lease)
                if first:
                    task_status.started(parts)
                    first = False
        except* LeaseLost as lost:
            log.error("stepping down to standby: %s", lost.exceptions[0])
        except* Exception as failed:
            if first:
                raise
            log.error("this server could not serve as the active one; stepping down", exc_info=failed)
            await trio.sleep(STANDBY_POLL * 5)  # another server may take it meanwhile
        # Here only when the term ended by itself; a shutdown (a cancellation) goes straight up
        # and serve() flushes the term's soft state before it closes the store.
        proc.front.set_control(None)
        role.become_standby()
        await store.step_down()
        lease = None


async def _active_term(proc: _Process, lease: Lease, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """One active term: load the tailnet, start what serves it, hand control traffic to it; runs
    until cancelled or the lease is lost (LeaseLost)."""
    cfg, store, supervisor, front = proc.cfg, proc.store, proc.supervisor, proc.front
    tailnet = Tailnet(
        store, v4=cfg.prefixes.v4, v6=cfg.prefixes.v6, allocation=cfg.prefixes.allocation,
        node_expiry=cfg.node.expiry, approval_required=cfg.node.approval_required,
    )
    try:
        await tailnet.load()
        journal = install_journal(tailnet, cfg.audit_retention_days)
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
        sign_in = SignIn(proc.oidc.settings, proc.oidc.provider, control, cfg.server_url) if proc.oidc else None
        public_routes = [login_page_route(control, sign_in.handler if sign_in else lambda: None)]
        if sign_in is not None:
            public_routes.append(sign_in.route)
        runtime = RuntimeSettings(store, cfg, dns, derp_maps, lambda: tailnet.bus.part_changed("derp"),
                                  clock=tailnet.clock)
        sessions = Sessions(tailnet, cfg.server_url)
        relay = proc.relay
        sampler = Sampler(store, tailnet.clock, sources_of(
            tailnet, relayed_bytes=lambda: int(relay.metrics().get("bytes_relayed", 0)) if relay is not None else 0,
            refresh=relay.refresh_metrics if isinstance(relay, WorkerPool) else None))
        webhooks = Webhooks(store, tailnet.clock, cfg.webhooks)
        journal.hub.listeners.append(webhooks.on_event)
        api = AdminAPI(tailnet, control, policy, certs=proc.certs, zone=zone, runtime=runtime, config=cfg,
                       stats=sampler, webhooks=webhooks, console=sessions)
        console = Console(api.router, sessions, sign_in)
        sup = supervisor.start

        async with trio.open_nursery() as nursery:
            await nursery.start(store.keep_active)  # raises LeaseLost when the lease is gone
            await sup(nursery, "soft-state flusher", tailnet.run_flusher)
            await sup(nursery, "DERP map refresh", derp_maps.run, lambda: tailnet.bus.part_changed("derp"))
            await sup(nursery, "API keys and settings", api.run)
            await sup(nursery, "audit log writer", journal.audit.run)
            await sup(nursery, "stats sampler", sampler.run)
            await sup(nursery, "webhook deliveries", webhooks.run)
            await sup(nursery, "housekeeping", run_housekeeping, tailnet, cfg.node.ephemeral_inactivity_timeout)
            await sup(nursery, "policy file watcher", policy.watch_file)
            await sup(nursery, "route auto-approver", policy.run_auto_approver)
            await sup(nursery, "policy recompiler", policy.run_recompiler)
            await sup(nursery, "HA route prober", prober.run)
            await sup(nursery, "DNS records watcher", dns.watch)
            dns_port = await sup(nursery, "certificate DNS zone", zone.run) if zone is not None else None
            term = ActiveTerm(tailnet, control, policy, api, zone, dns_port, journal, webhooks)
            proc.role.become_active(lease.epoch, term, [*public_routes, api.public_route(), console.route], [api])
            front.set_control(control)
            if store.elects:
                log.info("active (epoch %d): serving %d nodes, %d users from %s", lease.epoch, len(tailnet.nodes),
                         len(tailnet.users), store.description)
            task_status.started(term)
    finally:
        # The term's tailnet is left behind: the ends of its streams are recorded (last seen,
        # flushed by serve() at shutdown) but announced to no one.
        tailnet.stopping = True


def node_states(tailnet: Tailnet) -> dict[str, int]:
    states = {"online": 0, "offline": 0, "expired": 0, "pending_approval": 0}
    now = tailnet.clock()
    for n in tailnet.nodes.values():
        if not n.authorized:
            states["pending_approval"] += 1
        elif tailnet.is_expired(n, now):
            states["expired"] += 1
        else:
            states["online" if tailnet.is_online(n.id) else "offline"] += 1
    return states


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


@dataclass
class _OIDC:
    """The identity provider, found once per process (a term's sign-in uses it)."""

    settings: OIDCSettings
    provider: OIDCProvider


async def _start_oidc(cfg: Config) -> _OIDC | None:
    """Sign-in through the identity provider, if oidc.issuer is set. A provider that cannot be
    reached stops the start with oidc.only_start_if_oidc_is_available (Headscale's default);
    otherwise the server serves, says so, and keeps trying (the login page then shows the
    admin's command). Done at process start, so a standby refuses to start as an active
    server would."""
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
    return _OIDC(settings, provider)


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
                    policy = running.live_policy()
                    if policy is None:
                        log.info("received SIGHUP on a standby: the policy is read when this server takes over")
                        continue
                    log.info("received SIGHUP, reloading the policy")
                    try:
                        with acting(Actor("server", "sighup", source="")):
                            await policy.reload()
                    except Exception:  # a reload never ends the server; the old policy stays
                        log.exception("policy reload failed; the previous policy stays")
                    continue
                log.info("received %s, shutting down", signal.Signals(signum).name)
                live = running.live_tailnet()
                if live is not None:
                    live.stopping = True
                # A thousand cancelled connections leave cycles whose collection only delays
                # the exit (seconds at that size); the process is ending.
                gc.disable()
                nursery.cancel_scope.cancel()
                break
