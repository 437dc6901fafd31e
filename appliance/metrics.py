"""``/metrics`` on ``metrics_listen_addr``: Prometheus text format (exposition format 0.0.4).

Control-plane gauges (nodes by state, map sessions, event streams) and what the relay, the STUN
responder, the ACME client and the audit log count are read when scraped; what is counted as it
happens (registrations and refusals, API answers, deltas and their latency, webhook deliveries,
store latency) is in meters.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import h11
import trio

from derp.server import DerpServer
from derp.stun import StunStats
from derp.workers import WorkerPool

from . import meters
from .config import split_host_port
from .http.server import Answer, HTTPServer, text
from .supervise import TaskState

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# DerpServer.metrics() key → (metric name, type, help)
_RELAY = {
    "clients": ("trioscale_derp_clients", "gauge", "DERP client connections (mesh peers not counted)"),
    "unique_client_keys": ("trioscale_derp_client_keys", "gauge", "distinct node keys connected to the relay"),
    "home_clients": ("trioscale_derp_home_clients", "gauge", "clients that call this relay their home"),
    "mesh_peers_inbound": ("trioscale_derp_mesh_peers_inbound", "gauge", "mesh peers connected to us"),
    "mesh_links_connected": ("trioscale_derp_mesh_links_connected", "gauge", "our mesh links that are up"),
    "remote_keys": ("trioscale_derp_remote_keys", "gauge", "node keys reachable through mesh peers"),
    "accepted_total": ("trioscale_derp_accepted_total", "counter", "DERP connections admitted"),
    "refused_total": ("trioscale_derp_refused_total", "counter", "DERP connections refused (unknown node key)"),
    "packets_received": ("trioscale_derp_packets_received_total", "counter", "packets received from clients"),
    "bytes_received": ("trioscale_derp_bytes_received_total", "counter", "packet bytes received from clients"),
    "packets_relayed": ("trioscale_derp_packets_relayed_total", "counter", "packets queued to a local client"),
    "bytes_relayed": ("trioscale_derp_bytes_relayed_total", "counter", "packet bytes queued to a local client"),
    "packets_forwarded_out": ("trioscale_derp_packets_forwarded_out_total", "counter", "packets sent to a mesh peer"),
    "packets_forwarded_in": ("trioscale_derp_packets_forwarded_in_total", "counter", "packets received from a mesh peer"),
}
# WorkerPool.metrics() key → ..., when the relay runs on worker processes
_WORKERS = {
    "workers": ("trioscale_derp_workers", "gauge", "relay worker processes up"),
    "worker_restarts": ("trioscale_derp_worker_restarts_total", "counter", "relay workers started again after they died"),
    "packets_to_siblings": ("trioscale_derp_packets_between_workers_total", "counter",
                            "packets passed from one relay worker to another"),
    "handoffs_failed": ("trioscale_derp_handoffs_failed_total", "counter",
                        "connections closed because no relay worker could take them"),
}


@dataclass
class Sources:
    """Where the numbers come from; any part may be missing (relay off, STUN off)."""

    nodes: Callable[[], int]
    online_nodes: Callable[[], int]
    noise_connections: Callable[[], int]
    relay: DerpServer | WorkerPool | None = None
    stun: StunStats | None = None
    tasks: Mapping[str, TaskState] | None = None  # the supervised tasks (supervise.py)
    active: Callable[[], bool] | None = None  # this server's role (1 active, 0 standby)
    node_states: Callable[[], Mapping[str, int]] | None = None  # state → nodes (online, offline, ...)
    map_sessions: Callable[[], int] | None = None
    certs: object = None  # autocert's CertManager (obtained, failures), when it runs
    hub: Callable[[], object] | None = None  # the active term's events.hub.EventHub (None on a standby)
    audit: Callable[[], object] | None = None  # the active term's audit.log.AuditLog


def _metric(out: list[str], name: str, kind: str, help_: str, samples: Iterable[tuple[str, object]]) -> None:
    out.append(f"# HELP {name} {help_}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{labels} {value}")


def _label(name: str, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '{%s="%s"}' % (name, escaped)


def render(src: Sources) -> str:
    """The exposition text for the current values."""
    out: list[str] = []
    _metric(out, "trioscale_nodes", "gauge", "registered nodes", [("", src.nodes())])
    _metric(out, "trioscale_nodes_online", "gauge", "nodes with an open map stream", [("", src.online_nodes())])
    _metric(out, "trioscale_noise_connections", "gauge", "open Noise (ts2021) connections",
            [("", src.noise_connections())])
    if src.active is not None:
        _metric(out, "trioscale_active", "gauge", "1 while this server is the active one, 0 on a standby",
                [("", int(src.active()))])
    if src.relay is not None:
        m = src.relay.metrics()
        for key, (name, kind, help_) in _RELAY.items():
            _metric(out, name, kind, help_, [("", int(m.get(key, 0)))])  # type: ignore[arg-type]
        if isinstance(src.relay, WorkerPool):
            for key, (name, kind, help_) in _WORKERS.items():
                _metric(out, name, kind, help_, [("", int(m.get(key, 0)))])  # type: ignore[arg-type]
        drops = m.get("drops") or {}
        _metric(out, "trioscale_derp_dropped_total", "counter", "packets the relay dropped, by reason",
                [(_label("reason", str(r)), n) for r, n in sorted(drops.items())])  # type: ignore[union-attr]
    if src.node_states is not None:
        _metric(out, "trioscale_nodes_by_state", "gauge", "nodes by state (online, offline, expired, "
                "waiting for approval; an expired or waiting node is counted there only)",
                [(_label("state", k), v) for k, v in sorted(src.node_states().items())])
    if src.map_sessions is not None:
        _metric(out, "trioscale_map_sessions", "gauge", "open map streams (a node may hold more than one)",
                [("", src.map_sessions())])
    hub = src.hub() if src.hub is not None else None
    if hub is not None:
        _metric(out, "trioscale_event_streams", "gauge", "open server-sent-event streams", [("", hub.subscribers)])
        _metric(out, "trioscale_events_total", "counter", "events published (webhooks and streams) this term",
                [("", hub.published)])
        _metric(out, "trioscale_event_streams_dropped_total", "counter", "event streams dropped for falling behind",
                [("", hub.dropped_subscribers)])
    audit = src.audit() if src.audit is not None else None
    if audit is not None:
        _metric(out, "trioscale_audit_entries_total", "counter", "audit log entries written this term",
                [("", audit.written)])
        _metric(out, "trioscale_audit_dropped_total", "counter", "audit log entries dropped (database too slow)",
                [("", audit.dropped)])
    if src.certs is not None and hasattr(src.certs, "obtained"):
        _metric(out, "trioscale_acme_renewals_total", "counter",
                "ACME certificate orders (the first and each renewal), by result",
                [(_label("result", "ok"), src.certs.obtained), (_label("result", "failed"), src.certs.failures)])
    meters.METERS.render(out)
    if src.tasks is not None:
        tasks = sorted(src.tasks.values(), key=lambda t: t.name)
        _metric(out, "trioscale_task_restarts_total", "counter", "restarts of a supervised task after it failed",
                [(_label("task", t.name), t.restarts) for t in tasks])
    if src.stun is not None:
        st = src.stun
        _metric(out, "trioscale_stun_requests_total", "counter", "STUN datagrams received", [("", st.requests)])
        _metric(out, "trioscale_stun_responses_total", "counter", "STUN binding responses sent", [("", st.responses)])
        _metric(out, "trioscale_stun_dropped_total", "counter", "STUN datagrams not answered, by reason",
                [(_label("reason", r), n) for r, n in sorted(st.dropped.items())])
    return "\n".join(out) + "\n"


def metrics_server(src: Sources) -> HTTPServer:
    server = HTTPServer("metrics")

    async def route(req: h11.Request, body: bytes) -> Answer | None:
        path = req.target.decode("latin-1").split("?", 1)[0]
        if path != "/metrics":
            return None
        if req.method != b"GET":
            return text(405, "GET only\n")
        if isinstance(src.relay, WorkerPool):  # ask the worker processes for fresh counters
            await src.relay.refresh_metrics()
        return 200, [("content-type", CONTENT_TYPE)], render(src).encode()

    server.plain_routes.append(route)
    return server


async def serve_metrics(addr: str, src: Sources, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``/metrics`` on TCP ``addr`` (host:port, plain HTTP) until cancelled.

    ``task_status.started(port)`` with the bound port once listening.
    """
    host, port = split_host_port(addr)
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    log.info("metrics on %s (port %d)", addr, bound)
    task_status.started(bound)
    await trio.serve_listeners(metrics_server(src).handle, listeners)
