"""Policy engine benchmark: full recompile time and per-node filter size.

Generates a realistic tailnet (users with 1-3 devices, 30 tags on a third of
the nodes, some subnet routers) and a policy with 20 groups, 30 tags, 100
ACL/grant rules and an autogroup:self rule, then times PolicyEngine's
recompile (filters, SSH, caps and peers for every node).

    python3 bench/policy_compile.py [N ...]      # default: 100 1000 5000
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.policy import Node, PolicyEngine, User  # noqa: E402


def make_tailnet(n_nodes: int, rnd: random.Random):
    n_users = max(3, n_nodes // 2)
    users = [User(i, f"user{i}", f"user{i}@example.com") for i in range(1, n_users + 1)]
    nodes = []
    for i in range(1, n_nodes + 1):
        v4 = f"100.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
        v6 = f"fd7a:115c:a1e0::{i:x}"
        if rnd.random() < 0.33:
            tag = f"tag:t{rnd.randrange(30)}"
            routes = (f"10.{i % 250}.{(i // 250) % 250}.0/24",) if rnd.random() < 0.1 else ()
            nodes.append(Node(i, f"n{i}", None, (tag,), v4, v6, routes, routes))
        else:
            nodes.append(Node(i, f"n{i}", rnd.randrange(1, n_users + 1), (), v4, v6))
    return users, nodes


def make_policy(users, rnd: random.Random) -> str:
    groups = {f"group:g{g}": [u.email for u in rnd.sample(users, min(len(users), 10))] for g in range(20)}
    tag_owners = {f"tag:t{t}": ["group:g0"] for t in range(30)}
    acls = [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]
    grants = []
    for r in range(99):
        src = rnd.choice([f"group:g{rnd.randrange(20)}", f"tag:t{rnd.randrange(30)}", rnd.choice(users).email])
        dst = rnd.choice([f"tag:t{rnd.randrange(30)}", f"group:g{rnd.randrange(20)}", f"10.{r}.0.0/16"])
        port = rnd.choice(["22", "443", "80,443", "5432", "8000-8100", "*"])
        if r % 3:
            acls.append({"action": "accept", "src": [src], "dst": [f"{dst}:{port}"]})
        else:
            grants.append({"src": [src], "dst": [dst], "ip": [f"tcp:{port}"]})
    ssh = [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
           {"action": "check", "src": ["group:g1"], "dst": ["tag:t1"], "users": ["root"]}]
    return json.dumps({"groups": groups, "tagOwners": tag_owners, "acls": acls, "grants": grants, "ssh": ssh})


def bench(n: int) -> dict:
    rnd = random.Random(n)
    users, nodes = make_tailnet(n, rnd)
    policy = make_policy(users, rnd)
    t0 = time.perf_counter()
    eng = PolicyEngine(policy, users, nodes)
    full = time.perf_counter() - t0
    # One node changes (a new tag): the server's common incremental case.
    t0 = time.perf_counter()
    changed = eng.upsert_node(Node(nodes[0].id, nodes[0].hostname, None, ("tag:t3",),
                                   nodes[0].ipv4, nodes[0].ipv6))
    one = time.perf_counter() - t0
    sizes = [sum(len(r.get("DstPorts", ())) + len(r.get("CapGrant", ())) for r in res.packet_filter_rules)
             for res in eng.results().values()]
    rules = [len(res.packet_filter_rules) for res in eng.results().values()]
    peers = [len(res.peers) for res in eng.results().values()]
    return {"nodes": n, "compile_s": round(full, 3), "node_change_s": round(one, 3),
            "changed_nodes": len(changed),
            "rules_per_node_mean": round(statistics.mean(rules), 1), "rules_per_node_max": max(rules),
            "dstports_per_node_mean": round(statistics.mean(sizes), 1), "dstports_per_node_max": max(sizes),
            "peers_mean": round(statistics.mean(peers), 1)}


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [100, 1000, 5000]:
        print(json.dumps(bench(n)), flush=True)
