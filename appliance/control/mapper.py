"""Netmaps: the first full MapResponse of a stream, and the deltas after it.

A peer's node JSON is the same for every viewer, so it is built once per node version and
reused by every session; only Online is overlaid per message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..logthrottle import LogThrottle
from ..storage.records import NodeRecord
from ..tailnet.access import Access, AllowAll
from ..tailnet.changes import FULL, Pending, patch_fields
from ..tailnet.model import TAGGED_DEVICES_LOGIN, TAGGED_DEVICES_USER_ID, Tailnet
from ..tailnet.routes import EXIT_ROUTES, served
from .mapframes import RawJSON
from .codec import ZERO_TIME, format_time, to_json

log = logging.getLogger(__name__)

ONLINE_ONLY = patch_fields({"Online"})

# Capabilities every node gets, as Headscale grants them by default.
DEFAULT_SELF_CAPS = {
    "https://tailscale.com/cap/file-sharing": [],
    "https://tailscale.com/cap/is-admin": [],
    "https://tailscale.com/cap/ssh": [],
}


# With dns.certificates: what `tailscale cert` and `tailscale serve --https` look for on the self
# node (tailcfg.CapabilityHTTPS; serve asks control to enable the feature when it is missing).
CERTIFICATE_CAPS = {"https": []}


@dataclass
class SessionView:
    """What one map stream's client currently holds; deltas are computed against it."""

    node_id: int
    known_peers: set[int] = field(default_factory=set)
    known_profiles: set[int] = field(default_factory=set)
    cert_domains: tuple[str, ...] = ()  # as last sent in DNSConfig


class Mapper:
    def __init__(
        self,
        tailnet: Tailnet,
        *,
        base_domain: str,
        dns_config: Callable[[], dict | None],
        derp_map: Callable[[], dict],
        access: Access | None = None,
        certificates: bool = False,
    ) -> None:
        self.tailnet = tailnet
        self.base_domain = base_domain
        self.dns_config = dns_config
        self.derp_map = derp_map
        self.access: Access = access or AllowAll()
        # dns.certificates: each node may get a certificate for its own MagicDNS name.
        self.certificates = certificates
        self._cache: dict[int, tuple[int, dict]] = {}
        self._text_cache: dict[int, tuple[tuple[int, bool], str]] = {}
        # A node that cannot be rendered is left out of its peers' maps; said at a bounded rate.
        self.throttle = LogThrottle(log)
        tailnet.on_node_removed.append(self.forget)

    def forget(self, node_id: int) -> None:
        """Drop what is cached about a deleted node."""
        self._cache.pop(node_id, None)
        self._text_cache.pop(node_id, None)

    # --- nodes --------------------------------------------------------------------------

    def fqdn(self, n: NodeRecord) -> str:
        return f"{n.given_name}.{self.base_domain}."

    def owner_id(self, n: NodeRecord) -> int:
        return TAGGED_DEVICES_USER_ID if n.tags else (n.user_id or TAGGED_DEVICES_USER_ID)

    def node_json(self, n: NodeRecord) -> dict:
        version = self.tailnet.version.get(n.id, 0)
        hit = self._cache.get(n.id)
        if hit is None or hit[0] != version:
            hit = (version, self._build_node(n))
            self._cache[n.id] = hit
        out = dict(hit[1])
        out["Online"] = self.tailnet.is_online(n.id)
        return out

    def node_text(self, n: NodeRecord) -> str:
        """node_json as JSON text, cached per node version and online state."""
        key = (self.tailnet.version.get(n.id, 0), self.tailnet.is_online(n.id))
        hit = self._text_cache.get(n.id)
        if hit is None or hit[0] != key:
            hit = (key, json.dumps(self.node_json(n), separators=(",", ":")))
            self._text_cache[n.id] = hit
        return hit[1]

    def _render_peers(self, recs: list[NodeRecord], render: Callable[[NodeRecord], Any]) -> tuple[list, set[int]]:
        """``render`` each peer; one that fails (bad stored data, our bug) is left out and
        logged, and every other peer is still sent: a failure concerning one node affects
        only that node. Returns the rendered peers and the ids of those left out."""
        out, failed = [], set()
        for p in recs:
            try:
                out.append(render(p))
            except Exception as e:
                failed.add(p.id)
                self.throttle.log(logging.ERROR, "render-node", "node %d (%s) left out of its peers' maps: %r",
                              p.id, p.given_name, e)
        return out, failed

    def _build_node(self, n: NodeRecord) -> dict:
        addrs = []
        if n.ipv4:
            addrs.append(f"{n.ipv4}/32")
        if n.ipv6:
            addrs.append(f"{n.ipv6}/128")
        home = n.hostinfo.preferred_derp
        primary = self.tailnet.routes.primaries_of(n.id)
        exits = sorted(served(n) & EXIT_ROUTES)
        d: dict[str, Any] = {
            "ID": n.id,
            "StableID": str(n.id),
            "Name": self.fqdn(n),
            "User": self.owner_id(n),
            "Key": n.node_key,
            "KeyExpiry": format_time(n.expiry) if n.expiry else ZERO_TIME,
            "Machine": n.machine_key,
            "Addresses": addrs,
            "AllowedIPs": addrs + primary + exits,
            "Endpoints": list(n.endpoints),
            "Hostinfo": to_json(n.hostinfo),
            "Created": format_time(n.created_at),
            "MachineAuthorized": n.authorized,
        }
        if n.disco_key:
            d["DiscoKey"] = n.disco_key
        if home:
            d["HomeDERP"] = home
            d["DERP"] = f"127.3.3.40:{home}"  # clients before capver 111 read only this
        cap = self.tailnet.capver.get(n.id)
        if cap is not None:
            d["Cap"] = cap
        if primary:
            d["PrimaryRoutes"] = primary
        if n.tags:
            d["Tags"] = list(n.tags)
        if n.last_seen:
            d["LastSeen"] = format_time(n.last_seen)
        if self.tailnet.is_expired(n):
            d["Expired"] = True
        return d

    def _patch(self, n: NodeRecord, fields: frozenset) -> dict:
        """A PeersChangedPatch entry with the current values of ``fields``."""
        entry: dict[str, Any] = {"NodeID": n.id}
        for f in fields:
            if f == "Online":
                entry[f] = self.tailnet.is_online(n.id)
            elif f == "LastSeen":
                entry[f] = format_time(n.last_seen) if n.last_seen else ZERO_TIME
            elif f == "Endpoints":
                entry[f] = list(n.endpoints)
            elif f == "DiscoKey":
                entry[f] = n.disco_key
            elif f == "DERPRegion":
                entry[f] = n.hostinfo.preferred_derp
            elif f == "Cap":
                entry[f] = self.tailnet.capver.get(n.id, 0)
            else:
                raise ValueError(f"no patch field {f!r}")
        return entry

    def self_json(self, n: NodeRecord) -> dict:
        d = self.node_json(n)
        caps = dict(DEFAULT_SELF_CAPS)
        if self.certificates:
            caps.update(CERTIFICATE_CAPS)
        caps.update(self.access.cap_map(n.id))
        d["CapMap"] = caps
        return d

    def cert_domains(self, n: NodeRecord) -> tuple[str, ...]:
        """The names ``n`` may get certificates for: its MagicDNS name, as on Tailscale's
        service (the client checks a requested name against this list)."""
        return (self.fqdn(n).rstrip("."),) if self.certificates else ()

    def _dns_config(self, view: SessionView, n: NodeRecord) -> dict | None:
        """The tailnet's DNSConfig with this node's CertDomains; remembers what was sent."""
        dns = self.dns_config()
        view.cert_domains = self.cert_domains(n)
        if view.cert_domains:
            dns = {**(dns or {}), "CertDomains": list(view.cert_domains)}
        return dns

    def visible_peers(self, viewer_id: int, among: Iterable[int] | None = None) -> set[int]:
        """The live nodes ``viewer_id`` may see; with ``among``, only those of these IDs.

        Access.peers filters the candidates it is given, so asking about a delta's few nodes
        gives the same answer for them as asking about all: a delta then costs the size of the
        change, not of the tailnet (every session builds one on every change; issue 2).
        """
        now = self.tailnet.clock()
        nodes = self.tailnet.nodes
        viewer = nodes.get(viewer_id)
        if viewer is not None and not viewer.authorized:
            return set()  # a node waiting for approval sees nobody
        ids = nodes.keys() if among is None else among
        live = {i for i in ids if (n := nodes.get(i)) is not None and self.tailnet.is_usable(n, now)}
        return self.access.peers(viewer_id, live)

    def _profiles(self, user_ids: set[int]) -> list[dict]:
        out = []
        for uid in sorted(user_ids):
            if uid == TAGGED_DEVICES_USER_ID:
                out.append({"ID": uid, "LoginName": TAGGED_DEVICES_LOGIN, "DisplayName": "Tagged Devices"})
                continue
            u = self.tailnet.users.get(uid)
            if u is not None:
                p = {"ID": u.id, "LoginName": u.login_name, "DisplayName": u.display_name or u.name}
                if u.profile_pic_url:
                    p["ProfilePicURL"] = u.profile_pic_url
                out.append(p)
        return out

    # --- messages -----------------------------------------------------------------------

    def full(self, view: SessionView, *, raw_peers: bool = False) -> dict:
        """The first message of a stream (or a one-shot answer): everything. With
        ``raw_peers`` the peers are RawJSON text from the per-node cache (for encode_frame)."""
        n = self.tailnet.get_node(view.node_id)
        peers = sorted(self.visible_peers(n.id))
        peer_recs = [self.tailnet.nodes[i] for i in peers]
        users = {self.owner_id(n)} | {self.owner_id(p) for p in peer_recs}
        msg: dict[str, Any] = {
            "Node": self.self_json(n),
            "DERPMap": self.derp_map(),
            "Domain": self.base_domain,
            "CollectServices": False,
            "PacketFilter": self.access.packet_filter(n.id),
            "UserProfiles": self._profiles(users),
            "ControlTime": format_time(self.tailnet.clock()),
        }
        rendered, failed = self._render_peers(peer_recs, self.node_text if raw_peers else self.node_json)
        if rendered and raw_peers:
            msg["Peers"] = RawJSON("[" + ",".join(rendered) + "]")
        elif rendered:
            msg["Peers"] = rendered
        elif view.known_peers:
            msg["PeersRemoved"] = sorted(view.known_peers)  # [] would not remove anything
        dns = self._dns_config(view, n)
        if dns is not None:
            msg["DNSConfig"] = dns
        ssh = self.access.ssh_policy(n.id)
        if ssh is not None:
            msg["SSHPolicy"] = ssh
        view.known_peers = set(peers) - failed  # those left out are tried again as new
        view.known_profiles = users
        return msg

    def _reconcile_access(self, view: SessionView, pending: Pending, msg: dict) -> None:
        """After a policy result changed: the new filter, SSH policy and self attributes, and
        the peers that came into or went out of sight queued as ordinary peer changes."""
        node_id = view.node_id
        pending.self_node = True  # CapMap may have changed
        msg["PacketFilter"] = self.access.packet_filter(node_id)
        # Present and empty clears an earlier policy's SSH rules; absent would keep them.
        msg["SSHPolicy"] = self.access.ssh_policy(node_id) or {"rules": []}
        visible = self.visible_peers(node_id)
        for peer in visible - view.known_peers:
            pending.mark_peer(peer, FULL)
        for peer in view.known_peers - visible:
            pending.mark_removed(peer)

    def delta(self, view: SessionView, pending: Pending) -> dict | None:
        """The message that brings a client from ``view`` to the current model, or None."""
        if view.node_id not in self.tailnet.nodes:
            return None
        if pending.everything:
            return self.full(view, raw_peers=True)
        msg: dict[str, Any] = {}
        if "access" in pending.parts:
            self._reconcile_access(view, pending, msg)
        if pending.self_node:
            n = self.tailnet.nodes[view.node_id]
            msg["Node"] = self.self_json(n)
            if self.certificates and self.cert_domains(n) != view.cert_domains:
                pending.parts.add("dns")  # renamed: its certificate name changed with it
        if pending.ping_url:
            # Empty Types: the client answers with a HEAD request to URL, over Noise.
            msg["PingRequest"] = {"URL": pending.ping_url, "URLIsNoise": True}
        if "dns" in pending.parts:
            msg["DNSConfig"] = self._dns_config(view, self.tailnet.nodes[view.node_id]) or {}
        if "derp" in pending.parts:
            msg["DERPMap"] = self.derp_map()
        changed, patches, removed = [], [], []
        online: dict[str, bool] = {}
        visible = None
        for node_id, patch in pending.peers.items():
            n = self.tailnet.nodes.get(node_id)
            if visible is None:
                visible = self.visible_peers(view.node_id, pending.peers.keys())
            if n is None or node_id not in visible:
                if node_id in view.known_peers:
                    removed.append(node_id)
                    view.known_peers.discard(node_id)
                continue
            if patch is FULL or node_id not in view.known_peers:
                rendered, _ = self._render_peers([n], self.node_json)
                if rendered:
                    changed.extend(rendered)
                    view.known_peers.add(node_id)
            elif patch == ONLINE_ONLY:
                # The compact form for the commonest change (a reconnect storm is N of them
                # for each of N sessions): OnlineChange, keyed by node ID.
                online[str(node_id)] = self.tailnet.is_online(node_id)
            else:
                patches.append(self._patch(n, patch))
        for node_id in pending.removed:
            if node_id in view.known_peers:
                removed.append(node_id)
                view.known_peers.discard(node_id)
        if changed:
            msg["PeersChanged"] = changed
            new_users = {p["User"] for p in changed} - view.known_profiles
            if new_users:
                msg["UserProfiles"] = self._profiles(new_users)
                view.known_profiles |= new_users
        if patches:
            msg["PeersChangedPatch"] = patches
        if online:
            msg["OnlineChange"] = online
        if removed:
            msg["PeersRemoved"] = sorted(removed)
        return msg or None
