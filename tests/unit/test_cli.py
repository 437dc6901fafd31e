"""The CLI's edges that need no server: clear errors, config flags in either position."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=env)


def write_config(tmp_path, **extra) -> Path:
    cfg = {"data_dir": str(tmp_path / "data"), "unix_socket": str(tmp_path / "nothing.sock"), **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_server_not_running_is_one_line_and_nonzero(tmp_path):
    cfg = write_config(tmp_path)
    for args in (["-c", str(cfg), "users", "list"], ["nodes", "list", "-c", str(cfg)]):
        res = run(*args)
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the trioscale server" in lines[0]


def test_bad_config_stops_serve_naming_the_key(tmp_path):
    cfg = write_config(tmp_path, prefixes={"v4": "banana"})
    res = run("serve", "-c", str(cfg))
    assert res.returncode == 1
    assert "prefixes.v4" in res.stderr and "banana" in res.stderr


def test_configtest_prints_the_effective_config(tmp_path):
    cfg = write_config(tmp_path, listen_addr="127.0.0.1:9999", bogus_key=1)
    res = run("configtest", "-c", str(cfg))
    assert res.returncode == 0
    effective = yaml.safe_load(res.stdout)
    assert effective["listen_addr"] == "127.0.0.1:9999"
    assert effective["server_url"] == "http://127.0.0.1:8080"
    assert "bogus_key" in res.stderr  # one warning names the unknown key


def test_trioscale_config_env_var(tmp_path):
    cfg = write_config(tmp_path, listen_addr="127.0.0.1:7777")
    import os

    res = run("configtest", env={**os.environ, "TRIOSCALE_CONFIG": str(cfg)})
    assert yaml.safe_load(res.stdout)["listen_addr"] == "127.0.0.1:7777"
