#!/usr/bin/env bash
# Installs trioscale with its test dependencies and runs every test.
# The real Tailscale client is obtained by the test fixture itself (tests/realclient/binaries.py).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
