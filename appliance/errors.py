"""Domain errors. Each edge (admin API, register handler) turns them into its own answer
through one table; the message is safe to show to the user."""


class TrioscaleError(Exception):
    http_status = 500


class NotFound(TrioscaleError):
    http_status = 404


class Invalid(TrioscaleError):
    http_status = 400


class Conflict(TrioscaleError):
    http_status = 409


class AuthFailed(TrioscaleError):
    """A credential (pre-auth key, API key) was refused; the text says why."""

    http_status = 401


class Forbidden(TrioscaleError):
    """Not allowed here, whatever the input (e.g. a change the configuration reserves to a file)."""

    http_status = 403


class RateLimited(TrioscaleError):
    """Too many attempts from one source; the client should retry later."""

    http_status = 429
