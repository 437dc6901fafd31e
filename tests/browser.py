"""A real browser for tests: Debian's chromium, driven by Playwright (never a downloaded
browser). ``open_browser(netns)`` runs it inside a test's network namespace, where the servers
under test listen. The console tests can reuse it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Unavailable(Exception):
    pass


def ensure_chromium() -> str:
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            raise Unavailable("chromium is not installed and installing it needs root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, text=True,
                           timeout=1200, env=env)
        if r.returncode != 0:
            raise Unavailable(f"apt-get install chromium failed: {r.stderr[-500:]}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"playwright is not installed (pip install playwright): {e}") from None
    return CHROMIUM


@contextlib.contextmanager
def open_browser(workdir: Path, netns=None):
    """A Playwright Browser on Debian's chromium; inside ``netns`` (harness.Netns) if given."""
    exe = ensure_chromium()
    if netns is not None:
        # Playwright talks to chromium over a pipe, so the browser can live in the namespace.
        wrapper = workdir / "chromium-in-netns"
        wrapper.write_text(f"#!/bin/sh\nexec {shutil.which('ip')} netns exec {netns.name} {exe} \"$@\"\n")
        wrapper.chmod(0o755)
        exe = str(wrapper)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
