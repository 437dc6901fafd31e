"""StaticCertificate: a certificate from files (Headscale's tls_cert_path/tls_key_path),
reloaded when the files change."""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio

from .errors import CertificateError
from .tlsconfig import DEFAULT_ALPN, CertInfo, load_pair

log = logging.getLogger(__name__)

# How often the files are checked for change. Renewal tools (certbot, acme.sh) replace the
# files rarely; a few seconds of delay is fine and a stat is cheap.
CHECK_INTERVAL = 5.0


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


def _stamp(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class StaticCertificate:
    """Serves a certificate chain and key read from files; same surface as CertManager.

    Args:
        cert_path: PEM chain, leaf first (``tls_cert_path``).
        key_path: PEM private key (``tls_key_path``).
        clock: wall-clock time, for expiry checks.
        check_interval: seconds between checks for changed files.

    ``await nursery.start(static.run)`` loads the files (raising :class:`CertificateError`
    if they are unusable at start) and then watches them. A later bad pair is logged and the
    previous certificate stays in service.
    """

    source = "file"

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
                 clock: Callable[[], float] = time.time, check_interval: float = CHECK_INTERVAL,
                 alpn_protocols: tuple[str, ...] = DEFAULT_ALPN) -> None:
        self.cert_path = os.fspath(cert_path)
        self.key_path = os.fspath(key_path)
        self.check_interval = check_interval
        self.alpn_protocols = alpn_protocols
        self._clock = clock
        self._context: ssl.SSLContext | None = None
        self._info: CertInfo | None = None
        self._stamps: tuple[Any, ...] | None = None
        self._last_error: str | None = None
        self._expiry_logged = False

    def current_context(self) -> ssl.SSLContext | None:
        return self._context

    def challenge_context(self, server_name: str | None) -> ssl.SSLContext | None:
        return None  # no ACME here: acme-tls/1 probes get the normal certificate

    def http01_response(self, token: str) -> bytes | None:
        return None

    def load(self) -> bool:
        """Read the files if they changed since the last load (blocking).

        Returns True when a new certificate was installed. Raises CertificateError when the
        files are unusable; the previous certificate, if any, stays in service.
        """
        try:
            stamps = (_stamp(self.cert_path), _stamp(self.key_path))
            if stamps == self._stamps:
                return False
            with open(self.cert_path, "rb") as f:
                chain = f.read()
            with open(self.key_path, "rb") as f:
                key = f.read()
        except OSError as exc:
            raise CertificateError(f"cannot read certificate files: {exc}",
                                   hint="check tls_cert_path and tls_key_path") from None
        try:
            ctx, info = load_pair(chain, key, alpn_protocols=self.alpn_protocols)
        except CertificateError as exc:
            # Remember the stamps so a half-written pair is reported once, not every check.
            self._stamps = stamps
            exc.hint = "write the matching chain and key to tls_cert_path and tls_key_path"
            raise
        self._stamps = stamps
        self._context, self._info = ctx, info
        self._last_error = None
        self._expiry_logged = False
        log.info("autocert: loaded %s for %s, valid until %s", self.cert_path,
                 ", ".join(info.names), _iso(info.not_after))
        return True

    def _check_expiry(self) -> None:
        info = self._info
        if info is not None and self._clock() >= info.not_after and not self._expiry_logged:
            self._expiry_logged = True
            log.error("autocert: certificate %s expired at %s; clients reject it: put a renewed "
                      "chain and key at tls_cert_path/tls_key_path (reloaded within %.0f s)",
                      self.cert_path, _iso(info.not_after), self.check_interval)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the files, report started, then reload them whenever they change."""
        await trio.to_thread.run_sync(self.load)
        self._check_expiry()
        task_status.started()
        while True:
            await trio.sleep(self.check_interval)
            try:
                await trio.to_thread.run_sync(self.load)
            except CertificateError as exc:
                self._last_error = str(exc)
                log.error("autocert: %s: %s; %s; still serving the previous certificate",
                          self.cert_path, exc, exc.hint)
            self._check_expiry()

    def status(self) -> dict[str, Any]:
        info = self._info
        return {
            "source": self.source,
            "cert_path": self.cert_path,
            "names": list(info.names) if info else [],
            "issuer": info.issuer if info else None,
            "serial": format(info.serial, "x") if info else None,
            "not_before": _iso(info.not_before) if info else None,
            "not_after": _iso(info.not_after) if info else None,
            "expired": bool(info and self._clock() >= info.not_after),
            "next_renewal": None,
            "last_error": self._last_error,
        }
