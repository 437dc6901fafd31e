"""``python -m derp``: a DERP-only server like Tailscale's derper.

``main(argv)`` is also what the appliance calls for ``trioscale derp``.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
import os
import re
import ssl
import sys
from typing import Sequence

import trio

from .errors import DerpError
from .httpd import serve_http
from .keys import load_or_create_private_key
from .server import DerpServer
from .stun import StunStats, serve_stun
from .tls import server_context
from .workers import MAX_DEFAULT_WORKERS, WorkerPool, default_workers

log = logging.getLogger(__name__)


def build_parser(prog: str = "python -m derp") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run a standalone DERP relay and STUN server.")
    p.add_argument("-a", "--addr", default=":443",
                   help="listen address host:port for DERP over HTTPS (default :443; [::]:443 "
                        "for IPv6; port 0 picks one)")
    p.add_argument("--plain-http", action="store_true",
                   help="serve plain HTTP instead of TLS (tests; clients need "
                        "TS_DEBUG_USE_DERP_HTTP=1)")
    p.add_argument("--hostname", default="",
                   help="TLS hostname; with --certdir the files are <certdir>/<hostname>.crt/.key")
    p.add_argument("--certdir", default="", help="directory holding <hostname>.crt and .key")
    p.add_argument("--cert", default="", help="TLS certificate chain file (PEM)")
    p.add_argument("--key", default="", help="TLS private key file (PEM)")
    p.add_argument("--key-file", default="derp.key",
                   help="DERP private key file (privkey:<hex>, 0600; created if missing)")
    p.add_argument("--stun-port", type=int, default=3478, help="UDP STUN port (0 picks one)")
    p.add_argument("--no-stun", action="store_true", help="do not run the STUN responder")
    p.add_argument("--mesh-key", default="", help="region mesh key (64 hex characters)")
    p.add_argument("--mesh-key-file", default="", help="file holding the mesh key")
    p.add_argument("--mesh-with", default="",
                   help="comma-separated URLs of the other DERP servers of the region")
    p.add_argument("--mesh-ca", default="", help="CA bundle to verify mesh peers' certificates")
    p.add_argument("--workers", type=int, default=0,
                   help="relay worker processes (default 0: one per core, at most %d; 1: "
                        "all in this process)" % MAX_DEFAULT_WORKERS)
    p.add_argument("--log-level", default="INFO")
    return p


def _split_addr(addr: str) -> tuple[str | None, int]:
    m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*)):(?P<port>\d+)", addr)
    if not m:
        raise DerpError("bad listen address %r (want host:port)" % addr)
    host = m.group("v6") or m.group("host") or None
    return host, int(m.group("port"))


def _tls_files(args: argparse.Namespace) -> tuple[str, str] | None:
    """(certificate chain, key) files, checked by loading them; None for plain HTTP."""
    if args.plain_http:
        return None
    cert, key = args.cert, args.key
    if args.certdir:
        if not args.hostname:
            raise DerpError("--certdir needs --hostname")
        cert = os.path.join(args.certdir, args.hostname + ".crt")
        key = os.path.join(args.certdir, args.hostname + ".key")
    if not cert or not key:
        raise DerpError("TLS needs --cert/--key or --certdir/--hostname (or --plain-http)")
    try:
        server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DerpError("cannot use %s with %s: %s" % (cert, key, exc)) from None
    return cert, key


def _mesh_key(args: argparse.Namespace) -> str | None:
    if args.mesh_key_file:
        with open(args.mesh_key_file) as f:
            return f.read().strip()
    return args.mesh_key.strip() or None


async def serve_standalone(
    argv: Sequence[str],
    *,
    task_status: trio.TaskStatus[dict] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the standalone server described by ``argv`` until cancelled.

    ``task_status.started(info)`` once everything is bound; ``info`` has ``server`` (the
    DerpServer, or with several workers the WorkerPool), ``http_port``, ``stun_port`` (or
    None) and ``stun_stats``. Raises DerpError for bad flags or key files.
    """
    args = build_parser().parse_args(list(argv))
    host, port = _split_addr(args.addr)
    tls = _tls_files(args)
    priv = load_or_create_private_key(args.key_file)
    mesh_with = [u.strip() for u in args.mesh_with.split(",") if u.strip()]
    if args.workers < 0:
        raise DerpError("--workers must be 0 (one per core) or more")
    workers = args.workers or default_workers()
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        raise DerpError("unknown --log-level %r" % args.log_level)
    server: DerpServer | WorkerPool
    try:
        if workers > 1:
            server = WorkerPool(priv, workers=workers, mesh_key=_mesh_key(args),
                                mesh_with=mesh_with, mesh_ca=args.mesh_ca or None,
                                certificate=tls, log_level=level)
        else:
            mesh_ssl = ssl.create_default_context(cafile=args.mesh_ca) if args.mesh_ca else None
            server = DerpServer(priv, mesh_key=_mesh_key(args), mesh_with=mesh_with,
                                mesh_ssl_context=mesh_ssl)
    except ValueError as exc:
        raise DerpError(str(exc)) from None
    stats = StunStats()
    async with trio.open_nursery() as nursery:
        if isinstance(server, WorkerPool):
            # Workers before the listener: the first connections are handed over at once.
            await nursery.start(server.run)
            listeners = await trio.open_tcp_listeners(port, host=host)
            nursery.start_soon(trio.serve_listeners,
                               partial(server.hand_raw, tls=tls is not None), listeners)
            log.info("derp: listening on %s (%s), %d workers",
                     [l.socket.getsockname() for l in listeners],
                     "TLS" if tls else "plain HTTP", workers)
        else:
            ctx = server_context(*tls) if tls else None
            listeners = await nursery.start(partial_serve(server, host, port, ctx))
        stun_port = None
        if not args.no_stun:
            _, stun_port = await nursery.start(
                lambda task_status: serve_stun(host or "::", args.stun_port, stats=stats,
                                               task_status=task_status))
        if isinstance(server, DerpServer):
            await nursery.start(server.run)
        http_port = listeners[0].socket.getsockname()[1]
        log.info("derp: public key %s, http port %d, stun port %s",
                 server.public_key_hex, http_port, stun_port)
        task_status.started({"server": server, "http_port": http_port,
                             "stun_port": stun_port, "stun_stats": stats})


def partial_serve(server: DerpServer, host: str | None, port: int, ctx: ssl.SSLContext | None):
    async def run(task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        await serve_http(server, host, port, ssl_context=ctx, task_status=task_status)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m derp`` (and ``trioscale derp``). Returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(serve_standalone, argv)
    except KeyboardInterrupt:
        return 0
    except DerpError as exc:
        print("derp: %s" % exc, file=sys.stderr)
        return 2
    return 0
