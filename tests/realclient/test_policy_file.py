"""policy.mode: file — reloaded on change and on SIGHUP; a bad file never replaces a good one,
and a bad file at start stops the server with a message naming it."""

from __future__ import annotations

import signal
import subprocess
import sys

from .harness import REPO, Server, wait_until

GOOD = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}\n'
BETTER = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:443"]}]}\n'


def test_file_policy_reloads_and_keeps_the_last_good_one(netns, tmp_path):
    policy = tmp_path / "policy.hujson"
    policy.write_text(GOOD)
    server = Server(netns, tmp_path / "server", overrides={"policy": {"mode": "file", "path": str(policy)}})
    server.start()
    try:
        assert server.cli("policy", "get").stdout == GOOD
        policy.write_text(BETTER)
        wait_until(lambda: server.cli("policy", "get").stdout == BETTER, 5, what="the changed file to load")
        policy.write_text('{"acls": [}')  # broken
        wait_until(lambda: "was not applied" in server.log_text(), 5, what="the refusal to be logged")
        assert server.cli("policy", "get").stdout == BETTER
        # `policy set` belongs to database mode; in file mode it says what to do instead
        res = server.cli("policy", "set", "-f", str(policy), check=False)
        assert res.returncode == 1 and "policy.mode is 'file'" in res.stderr
        # SIGHUP reloads at once
        policy.write_text(GOOD)
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: server.cli("policy", "get").stdout == GOOD, 5, what="the SIGHUP reload")
    finally:
        server.stop()


def test_bad_policy_file_at_start_is_a_clear_error(netns, tmp_path):
    policy = tmp_path / "broken.hujson"
    policy.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}], "nonsense": true}')
    server = Server(netns, tmp_path / "server", overrides={"policy": {"mode": "file", "path": str(policy)}})
    proc = subprocess.run(
        netns.wrap([sys.executable, "-m", "appliance", "serve", "-c", str(server.config_path)]),
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr and str(policy) in proc.stderr and "nonsense" in proc.stderr
