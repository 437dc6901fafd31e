"""A reusable ACME certificate manager for a Trio TLS server."""
