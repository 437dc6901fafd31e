#!/usr/bin/env python3
"""Build trioscale_VERSION_ARCH.deb with dpkg-deb.

    python3 packaging/build_deb.py [--arch x86_64|aarch64|all] [--out dist] [--version V]

Layout (Headscale's package is the model, so its users find things where they expect them):
  /usr/bin/trioscale                  a Python script: /usr/bin/python3 -IS, then the private dir
  /usr/lib/trioscale/site/            our packages and every dependency (manylinux wheels for
                                      CPython 3.11 to 3.14), apart from the release's python3-*;
                                      a plain directory, not a venv, since a venv records the
                                      absolute path it was made at and the interpreter it copies
  /lib/systemd/system/trioscale.service
  /etc/trioscale/config.yaml          conffile: the documented example with data_dir set
  /usr/share/doc/trioscale/           copyright, changelog
State goes to /var/lib/trioscale, owned by the trioscale system user that postinst creates.
Bytecode is compiled by postinst and removed by prerm, as python3's own packages do it.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # staging.py beside this file
import staging  # noqa: E402

DEBIAN = staging.HERE / "debian"
MAINTAINER = "trioscale developers <trioscale@example.org>"
SOURCE_DATE_EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "1700000000"))


def packaged_config() -> str:
    text = (staging.REPO / "appliance" / "config-example.yaml").read_text()
    header = (
        "# Installed by the trioscale Debian package as a conffile: your changes are kept on\n"
        "# upgrades. `trioscale install --domain vpn.example.com --email you@example.com` sets\n"
        "# the keys for a public server (server_url, listen_addr, ACME) in this file.\n"
    )
    new, n = re.subn(r"^# data_dir: /var/lib/trioscale$", "data_dir: /var/lib/trioscale", text, count=1, flags=re.M)
    if n != 1:
        raise SystemExit("config-example.yaml has no '# data_dir: /var/lib/trioscale' line to set")
    if new.startswith("---\n"):
        return "---\n" + header + new[4:]
    return header + new


def changelog(version: str) -> bytes:
    date = email.utils.formatdate(SOURCE_DATE_EPOCH, usegmt=False)
    text = (
        f"trioscale ({version}) unstable; urgency=medium\n\n"
        f"  * Release {version}; see the project's history for the changes.\n\n"
        f" -- {MAINTAINER}  {date}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def put(root: Path, path: str, data: bytes | str, mode: int = 0o644) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(mode)
    return p


def normalise(tree: Path) -> None:
    """Modes lintian and policy expect: 0755 directories, 0644 files, shared libraries
    included (policy 8.1; the executables are put in afterwards with their own mode)."""
    for dirpath, dirnames, filenames in os.walk(tree):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            p.chmod(0o644)


def build(arch: str, out_dir: Path, version: str) -> Path:
    deb_arch = staging.ARCHES[arch]
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"trioscale_{version}_{deb_arch}.deb"
    with tempfile.TemporaryDirectory(prefix="trioscale-deb-") as tmp:
        root = Path(tmp) / "root"
        site = staging.stage_site(arch, root / "usr/lib/trioscale/site")
        # The unit's copy inside the package is what install.py reads; render it for /usr/bin.
        unit = (staging.HERE / "systemd" / "trioscale.service").read_text().replace("@BIN@", "/usr/bin/trioscale")
        normalise(root)
        put(root, "/usr/bin/trioscale", (DEBIAN / "trioscale").read_text(), 0o755)
        put(root, "/lib/systemd/system/trioscale.service", unit)
        put(root, "/etc/trioscale/config.yaml", packaged_config())
        put(root, "/usr/share/doc/trioscale/copyright", (DEBIAN / "copyright").read_text())
        put(root, "/usr/share/doc/trioscale/changelog.gz", changelog(version))
        assert (site / "appliance" / "cli.py").exists()

        size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024 + 1
        md5 = []
        for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.is_symlink()):
            rel = p.relative_to(root)
            if not str(rel).startswith("etc/"):
                md5.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}\n")
        control = (DEBIAN / "control").read_text()
        control = control.replace("@VERSION@", version).replace("@ARCH@", deb_arch).replace("@SIZE@", str(size_kib))
        meta = root / "DEBIAN"
        put(root, "/DEBIAN/control", control)
        put(root, "/DEBIAN/conffiles", "/etc/trioscale/config.yaml\n")
        put(root, "/DEBIAN/md5sums", "".join(md5))
        for script in ("postinst", "prerm", "postrm"):
            put(root, f"/DEBIAN/{script}", (DEBIAN / script).read_text(), 0o755)
        meta.chmod(0o755)
        for p in root.rglob("*"):  # reproducible: one timestamp for every file
            os.utime(p, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)
        staging.log(f"writing {out}")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)],
                       check=True, timeout=900, env={**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)},
                       stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=staging.host_arch(), choices=[*staging.ARCHES, "all"])
    ap.add_argument("--out", type=Path, default=staging.REPO / "dist")
    ap.add_argument("--version", default=None, help="package version (default: the program's)")
    args = ap.parse_args()
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("dpkg-deb not found (apt-get install dpkg)")
    for arch in (staging.ARCHES if args.arch == "all" else [args.arch]):
        print(build(arch, args.out, args.version or staging.version()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
