#!/usr/bin/env python3
"""Build trioscale-VERSION-linux_ARCH.pyz: the server, its CLI and every dependency in one file.

    python3 packaging/build_pyz.py [--arch x86_64|aarch64|all] [--out dist]

The zipapp is made with shiv: at first run it unpacks itself into $SHIV_ROOT (default ~/.shiv;
the systemd unit sets /var/cache/trioscale), because native modules cannot be imported from a
zip. It then runs with a stock python3 of version 3.11 or newer and nothing else installed:
``python3 trioscale-*.pyz serve``. Needs PyPI for the wheels; shiv itself is installed into a
tools venv in ~/.cache/trioscale-build.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # staging.py beside this file
import staging  # noqa: E402

SHIV = "shiv==1.0.8"


def shiv_bin() -> Path:
    tools = staging.CACHE / "tools"
    exe = tools / "bin" / "shiv"
    if not exe.exists():
        staging.log("installing shiv into a tools venv")
        subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True, timeout=300)
        subprocess.run([str(tools / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", SHIV], check=True, timeout=600)
    return exe


def build(arch: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"trioscale-{staging.version()}-linux_{arch}.pyz"
    with tempfile.TemporaryDirectory(prefix="trioscale-pyz-") as tmp:
        site = staging.stage_site(arch, Path(tmp) / "site")
        staging.log(f"writing {out}")
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "1700000000")}
        subprocess.run([
            str(shiv_bin()), "--site-packages", str(site), "--entry-point", "appliance.cli:main",
            "--python", "/usr/bin/env python3", "--output-file", str(out), "--compressed",
            "--reproducible",
        ], check=True, timeout=600, env=env)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=staging.host_arch(), choices=[*staging.ARCHES, "all"])
    ap.add_argument("--out", type=Path, default=staging.REPO / "dist")
    args = ap.parse_args()
    for arch in (staging.ARCHES if args.arch == "all" else [args.arch]):
        print(build(arch, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
