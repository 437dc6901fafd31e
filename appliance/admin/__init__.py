"""The admin API: Headscale's v1 HTTP API shapes, served on the unix socket for the CLI."""
