"""The web console at /admin: sign-in (one-time links, OIDC), sessions and pages on the admin
API's operations."""
