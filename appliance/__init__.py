"""trioscale: a self-hosted Tailscale control server."""

__version__ = "0.1.0"
