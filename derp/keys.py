"""The DERP server's private key file: ``privkey:<64 hex>``, mode 0600 (Tailscale/Headscale)."""

from __future__ import annotations

import os
import re

from . import frames as fr
from .errors import DerpError

_PREFIX = "privkey:"


def format_private_key(key: bytes) -> str:
    return _PREFIX + key.hex()


def parse_private_key(text: str) -> bytes:
    """Parse ``privkey:<64 hex>`` (surrounding whitespace allowed). Raises DerpError."""
    t = text.strip()
    if not t.startswith(_PREFIX) or not re.fullmatch(r"[0-9a-fA-F]{64}", t[len(_PREFIX):]):
        raise DerpError("private key file must hold privkey:<64 hex characters>")
    return bytes.fromhex(t[len(_PREFIX):])


def load_or_create_private_key(path: str) -> bytes:
    """Read the key at ``path``, or create it (mode 0600, atomically) if it does not exist.

    Refuses a key file readable by group or others, as a leaked relay key lets anyone
    impersonate this server.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        key = fr.generate_private_key()
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(format_private_key(key) + "\n")
        os.replace(tmp, path)
        return key
    if st.st_mode & 0o077:
        raise DerpError("%s is readable by others; chmod 600 it" % path)
    with open(path) as f:
        return parse_private_key(f.read())
