"""What the admin API's operations act on, handed to each resource module's ``routes``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tailnet.model import Tailnet
from .apikeys import ApiKeys


@dataclass
class Backend:
    tailnet: Tailnet
    apikeys: ApiKeys
    control: Any = None  # control.service.ControlService: pending interactive logins
    policy: Any = None  # tailnet.policy.PolicyManager
    certs: Any = None  # autocert's CertManager or StaticCertificate; None without TLS
    zone: Any = None  # certdns.CertZone when dns.certificates is on
    runtime: Any = None  # admin.runtime.RuntimeSettings: DNS and DERP changed at run time
    config: Any = None  # config.Config
    console: Any = None  # console.sessions.Sessions: the web console's login links
    journal: Any = None  # audit.journal.ServerJournal: the audit log and the event hub
    webhooks: Any = None  # events.webhooks.Webhooks
    stats: Any = None  # stats.samples.Sampler

    @property
    def audit(self):
        return self.journal.audit

    @property
    def events(self):
        return self.journal.hub
