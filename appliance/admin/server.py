"""/api/v1/version, /health, /certs and /settings: the server itself."""

from __future__ import annotations

import dataclasses

from .. import __version__
from ..config import config_to_dict
from .backend import Backend
from .router import Call, Router
from .types import Certificate, Certs, Health, Settings, Version


def routes(r: Router, b: Backend) -> None:
    @r.get("/api/v1/version", "version", "The server's version", tag="Server", response=Version)
    async def version(call: Call) -> Version:
        return Version(__version__)

    @r.get("/api/v1/health", "health", "Health, including the database", tag="Server", response=Health)
    async def health(call: Call) -> Health:
        await b.tailnet.store.ping()
        return Health(True)

    @r.get("/api/v1/certs", "getCertificates", "The served TLS certificate", tag="Server", response=Certs,
           description="Names, issuer, validity, next renewal and last error; `certificate` is null "
                       "when trioscale does not terminate TLS; `dns_zone` is the zone of the nodes' "
                       "certificate names (null when dns.certificates is off).")
    async def certs(call: Call) -> Certs:
        zone = b.zone.status() if b.zone is not None else None
        if b.certs is None:
            return Certs(False, None, zone)
        st = b.certs.status()
        fields = {f.name: st.get(f.metadata["json"]) for f in dataclasses.fields(Certificate)}
        fields["names"] = tuple(fields["names"] or ())
        fields["expired"] = bool(fields["expired"])
        fields["failures"] = int(fields["failures"] or 0)
        return Certs(True, Certificate(**fields), zone)

    @r.get("/api/v1/settings", "getSettings", "The effective server settings", tag="Server",
           response=Settings,
           description="config.yaml's values (secrets redacted) with the changes made through the API "
                       "(DNS, DERP regions) applied. The rest is changed in config.yaml, then a restart.")
    async def settings(call: Call) -> Settings:
        doc = config_to_dict(b.config, redact=True) if b.config is not None else {}
        changed: tuple[str, ...] = ()
        if b.runtime is not None:
            doc, changed = b.runtime.applied_to(doc)
        return Settings(doc, changed)
