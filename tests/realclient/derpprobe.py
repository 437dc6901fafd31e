"""``python3 -m tests.realclient.derpprobe URL CA_FILE PRIVATE_KEY``: try a DERP handshake as
the node key ``PRIVATE_KEY`` (``privkey:<hex>``) against the relay at ``URL`` (https, trusting
``CA_FILE``; or http, with ``-`` for CA_FILE). Prints ``accepted`` (exit 0) or ``refused: <why>`` (exit 3).

Runs inside the test network namespace, so it is a separate process.
"""

import ssl
import sys

import trio

from derp.client import connect_url
from derp.errors import DerpError


async def probe(url: str, cafile: str, private: bytes) -> str:
    ctx = ssl.create_default_context(cafile=cafile) if cafile != "-" else None
    try:
        with trio.fail_after(10):
            client = await connect_url(url, private, ssl_context=ctx)
    except (DerpError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        return f"refused: {e!r}"
    async with client:
        return "accepted" if client.server_info.get("version") == 2 else f"refused: odd {client.server_info}"


if __name__ == "__main__":
    url, cafile, key = sys.argv[1:4]
    if not key.startswith("privkey:"):
        raise SystemExit("want privkey:<hex>")
    out = trio.run(probe, url, cafile, bytes.fromhex(key[8:]))
    print(out)
    sys.exit(0 if out == "accepted" else 3)
