"""`trioscale policy reach SRC DST[:PORT]`: may one node open a connection
to another, and which rule says so."""

from __future__ import annotations

from .engine import PolicyEngine
from .model import Node
from .policytests import allowed


def reach(engine: PolicyEngine, src_node: Node, dst_node: Node, port: int = 0,
          proto: int = 6) -> tuple[bool, str]:
    """(allowed, description of the first allowing rule or why not).

    Checks every address pair of the same family; one allowed pair is enough,
    as a client would just use that address.
    """
    fc = engine.compiler
    for s in src_node.ips:
        for d in dst_node.ips:
            if (":" in s) != (":" in d):
                continue
            cr = allowed(fc, s, src_node, d, dst_node, port, proto)
            if cr is not None:
                kind = "acls" if fc.policy.rules[cr.index].is_acl else "grants"
                n_acls = sum(1 for r in fc.policy.rules if r.is_acl)
                pos = cr.index if kind == "acls" else cr.index - n_acls
                return True, f"{kind}[{pos}] allows {s} -> {d}:{port}"
    return False, f"no rule allows {src_node.hostname} -> {dst_node.hostname}:{port}"
