"""A reusable DERP relay server and STUN responder (see ../shared/docs/protocol/derp.md).

Public API (what the appliance uses)::

    DerpServer(private_key, *, verify_client=None, mesh_key=None, mesh_with=(), ...)
        .handle_upgrade(stream, method, target, headers, leftover, *, remote_addr=None)
        .handle_plain_http(method, target, headers) -> (status, headers, body) | None
        .metrics() -> dict
        .run(*, task_status)            # mesh links; start it when mesh_with is given
        .set_health(text) / .notify_restarting(reconnect_in, try_for) / .close_all()
    WorkerPool(private_key, *, workers, verify_client=None, ...)   # the relay on N processes
        .run(*, task_status) / .hand_raw(tcp_stream, prefix, *, tls)
        .handle_upgrade(...) / .handle_plain_http(...) / .metrics() / .refresh_metrics()
    serve_stun(host="::", port=3478, *, stats=None, task_status)
    load_or_create_private_key(path) -> bytes
    cli.main(argv=None) -> int          # python -m derp / trioscale derp
"""

from .errors import ClientRefused, DerpError, ProtocolError, StunError
from .keys import load_or_create_private_key
from .server import DerpServer
from .stun import StunStats, serve_stun
from .workers import WorkerPool

__all__ = [
    "ClientRefused", "DerpError", "DerpServer", "ProtocolError", "StunError", "StunStats",
    "WorkerPool", "load_or_create_private_key", "serve_stun",
]
