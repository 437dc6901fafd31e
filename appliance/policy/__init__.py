"""trioscale's policy engine: Tailscale policy files (HuJSON) → per-node
packet filters, SSH policies, node capabilities and peer visibility.

Pure computation: no I/O, no Trio.
"""

from .engine import NodeResult, PolicyEngine
from .errors import ParseError, PolicyError, PolicyTestFailure, ValidationError
from .evaluate import evaluate, tailnet_from_topology
from .model import Node, User
from .parse import parse_policy

__all__ = [
    "Node", "NodeResult", "ParseError", "PolicyEngine", "PolicyError", "PolicyTestFailure",
    "User", "ValidationError", "evaluate", "parse_policy", "tailnet_from_topology",
]
