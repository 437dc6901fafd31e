"""`trioscale policy evaluate` (and a standalone `python -m appliance.policy`)."""

from __future__ import annotations

import argparse
import json
import sys

from .evaluate import evaluate


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``evaluate`` sub-command on an argparse subparsers object."""
    p = subparsers.add_parser("evaluate", help="compute, offline, what each node of a topology gets")
    p.add_argument("--policy", required=True, help="policy file (HuJSON)")
    p.add_argument("--topology", required=True, help="topology file (JSON, corpus format)")
    p.add_argument("-o", "--output", choices=["json"], default="json")
    p.add_argument("--server-url", default="https://unused",
                   help="base URL put in SSH check actions")
    p.set_defaults(func=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the evaluation as JSON; exit status 1 when the policy is refused."""
    with open(args.policy, "rb") as f:
        text = f.read()
    with open(args.topology, "rb") as f:
        topology = json.load(f)
    if isinstance(topology.get("topology"), dict):
        topology = topology["topology"]   # accept a whole corpus case too
    out = evaluate(text, topology, server_url=args.server_url)
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 1 if out["error"] is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.policy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)
