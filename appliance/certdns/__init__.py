"""Certificates for MagicDNS names: the ACME DNS-01 challenge records that ``tailscale cert``
asks for through ``/machine/set-dns``, and who publishes them.

- ``records``: the challenge TXT records held now, each with its expiry (pure).
- ``authority``: the embedded authoritative DNS server's core, bytes in and bytes out (pure).
- ``responselimit``: per-source response rate limiting against amplification (pure).
- ``framing``, ``server``: the Trio driver, UDP and TCP.
- ``providers``, ``rfc2136``, ``cloudflare``: where records are published.
- ``zone``: ties them together for set-dns, the sweeper and ``trioscale certs``.
"""
