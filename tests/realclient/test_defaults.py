"""`trioscale serve` with no flags and no config works: plain HTTP on 127.0.0.1:8080, state in the
default data directory (as root /var/lib/trioscale), keys made on first start with mode 0600.

Runs inside the test namespace with a private tmpfs over /var/lib, so the machine's own
/var/lib is untouched."""

import subprocess
import sys

from .harness import REPO

SCRIPT = r"""
set -e
mount -t tmpfs none /var/lib
cd "$(mktemp -d)"
env -u TRIOSCALE_CONFIG PYTHONPATH="$REPO" "$PY" -m appliance serve > serve.log 2>&1 &
SERVER=$!
for i in $(seq 100); do
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/key?v=133')" 2>/dev/null && break
  sleep 0.1
done
"$PY" -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:8080/key?v=133'))['publicKey'][:5])"
stat -c '%a %n' /var/lib/trioscale/noise_private.key /var/lib/trioscale/db.sqlite
cd "$REPO" && PYTHONPATH="$REPO" "$PY" -m appliance users create carol
kill $SERVER; wait $SERVER || true
"""


def test_serve_on_embedded_defaults(netns):
    res = subprocess.run(netns.wrap(["sh", "-c", SCRIPT]), capture_output=True, text=True, timeout=60,
                         env={"REPO": str(REPO), "PY": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "mkey:"
    assert "600 /var/lib/trioscale/noise_private.key" in lines
    assert "600 /var/lib/trioscale/db.sqlite" in lines  # hashed secrets are still secrets
    assert "User created: carol" in res.stdout
