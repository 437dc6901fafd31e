"""Tailscale's control transport: Noise IK over an upgraded HTTP connection (sans-IO core)."""
