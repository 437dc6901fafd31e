"""Tailscale SSH check mode (tailcfg.SSHAction.HoldAndDelegate).

A ``check`` rule in the policy gives the destination node the action "hold and ask
/machine/ssh/action/SRC/to/DST?local_user=USER". The node asks that inside Noise when someone
connects. The first call is answered at once: accept when the pair (SRC, DST) passed a check
within the rule's checkPeriod, else an auth request is opened and the node is told to show its
link and ask again with its ID. That second call waits until the person signed in (OIDC: only
the owner of the source device) or an admin decided (``trioscale auth approve/reject``).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable
from urllib.parse import parse_qs, urlsplit

from ..errors import Invalid
from ..policy.ssh import ACCEPT_ACTION
from .authrequests import TooManyRequests, parse_auth_id
from .codec import WireError

if TYPE_CHECKING:
    from ..http.h2server import Request, Response
    from .service import ControlService, NoisePeer

PREFIX = "/machine/ssh/action/"
_PATH = re.compile(r"/machine/ssh/action/([0-9]{1,18})/to/([0-9]{1,18})")
MAX_QUERY_FIELDS = 8  # the client sends local_user and, calling back, auth_id
MAX_LOCAL_USER = 256  # a Unix account name; Linux allows 32 characters
MAX_PASSED = 65536  # remembered passed checks (src, dst); the oldest are forgotten first


@dataclass(frozen=True, slots=True)
class ActionRequest:
    src_id: int
    dst_id: int
    local_user: str
    auth_id: str | None  # set when the node calls back after a hold


def parse_action(target: str) -> ActionRequest:
    """The request target of an SSH action call, checked. Raises WireError naming what is
    wrong."""
    url = urlsplit(target)
    m = _PATH.fullmatch(url.path)
    if m is None:
        raise WireError("SSH action: the path is not /machine/ssh/action/SRC_ID/to/DST_ID")
    try:
        fields = parse_qs(url.query, max_num_fields=MAX_QUERY_FIELDS, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise WireError(f"SSH action: the query is not UTF-8 or has more than {MAX_QUERY_FIELDS} fields") from None
    local_user = fields.get("local_user", [""])[-1]
    if len(local_user) > MAX_LOCAL_USER or not local_user.isprintable():
        raise WireError(f"SSH action: local_user is not a user name (printable, at most {MAX_LOCAL_USER} characters)")
    auth_id = fields.get("auth_id", [None])[-1]
    if auth_id is not None:
        try:
            auth_id = parse_auth_id(auth_id)
        except Invalid as e:
            raise WireError(f"SSH action: auth_id: {e}") from None
    return ActionRequest(int(m.group(1)), int(m.group(2)), local_user, auth_id)


class SSHChecks:
    """The SSH actions of one control service, and the checks that passed."""

    def __init__(self, control: ControlService) -> None:
        self.control = control
        self.tailnet = control.tailnet
        # Set by the policy layer: how long a passed check of (src, dst) lasts (None: no check
        # rule covers the pair).
        self.check_period: Callable[[int, int], float | None] = lambda src, dst: None
        # (src, dst) → when the check passed, and the two node keys then: a node deleted and
        # its ID given to another, or a node that logged in again, does not inherit it.
        self._passed: OrderedDict[tuple[int, int], tuple[datetime, str, str]] = OrderedDict()

    async def handle(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        a = parse_action(req.path)
        dst = self.tailnet.nodes.get(a.dst_id)
        if dst is None or a.src_id not in self.tailnet.nodes:
            await resp.simple(404, b"no such node\n")
            return
        # Only the destination's own machine may ask: anyone else could record passed checks
        # for pairs that are not theirs.
        if dst.machine_key != peer.machine_key:
            self.control.throttle.warning("ssh-action-foreign", "%s: SSH action for node %d asked by another "
                                          "machine", name, a.dst_id)
            await resp.simple(403, b"not the destination node\n")
            return
        action = await self._decide(a, peer)
        await resp.simple(200, json.dumps(action).encode(), "application/json")

    async def _decide(self, a: ActionRequest, peer: NoisePeer) -> dict:
        period = self.check_period(a.src_id, a.dst_id)
        now = self.tailnet.clock()
        keys = (self.tailnet.nodes[a.src_id].node_key, self.tailnet.nodes[a.dst_id].node_key)
        pair = (a.src_id, a.dst_id)
        if a.auth_id is None:
            passed = self._passed.get(pair)
            if period and passed is not None and passed[1:] == keys and (now - passed[0]).total_seconds() < period:
                return dict(ACCEPT_ACTION)
            return self._hold(a, peer, now)
        req = self.control.auth.get(a.auth_id, now)
        if req is None:
            # Expired or lost (a restart): hold again rather than leave the client asking.
            return self._hold(a, peer, now)
        if req.is_registration or (req.src_node_id, req.dst_node_id) != pair:
            return {"reject": True, "message": "this check belongs to another connection\n"}
        verdict = await req.wait(now)
        if verdict is None:
            return self._hold(a, peer, self.tailnet.clock())
        if not verdict.accepted:
            return {"reject": True, "message": f"SSH check refused: {verdict.reason}\n"}
        if period is not None:
            self._passed[pair] = (self.tailnet.clock(), *keys)
            self._passed.move_to_end(pair)
            while len(self._passed) > MAX_PASSED:
                self._passed.popitem(last=False)
        return dict(ACCEPT_ACTION)

    def _hold(self, a: ActionRequest, peer: NoisePeer, now: datetime) -> dict:
        control = self.control
        try:
            req = control.auth.start_ssh_check(src_node_id=a.src_id, dst_node_id=a.dst_id, local_user=a.local_user,
                                               remote=peer.remote, now=now)
        except TooManyRequests as e:
            return {"reject": True, "message": f"{e}\n"}
        control.throttle.info("ssh-check-held", "SSH check %s: node %d -> node %d as %r waits for sign-in",
                              req.auth_id, a.src_id, a.dst_id, a.local_user)
        hold = (f"{control.server_url}{PREFIX}$SRC_NODE_ID/to/$DST_NODE_ID"
                f"?local_user=$LOCAL_USER&auth_id={req.auth_id}")
        return {"holdAndDelegate": hold,
                "message": f"# trioscale SSH requires an additional check.\n# To authenticate, visit: "
                           f"{control.auth_url(req)}\n"}
