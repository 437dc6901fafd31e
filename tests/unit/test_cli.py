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


def test_serve_domain_is_the_one_flag_appliance(tmp_path):
    from appliance.cli import _config, build_parser
    from appliance.relay import embedded_region

    cfg_path = write_config(tmp_path, listen_addr="127.0.0.1:8080", server_url="http://old.example:8080",
                            tls_cert_path="/nonexistent/c.pem", tls_key_path="/nonexistent/k.pem",
                            acme_email="old@example.com", derp={"server": {"enabled": False}})
    args = build_parser().parse_args(["serve", "-c", str(cfg_path), "--domain", "vpn.example.com",
                                      "--email", "admin@example.com"])
    cfg = _config(args)
    assert cfg.server_url == "https://vpn.example.com"
    assert cfg.listen_addr == ":443"
    assert cfg.tls.uses_letsencrypt and not cfg.tls.uses_files
    assert cfg.tls.letsencrypt_hostname == "vpn.example.com"
    assert cfg.tls.letsencrypt_challenge_type == "TLS-ALPN-01"
    assert cfg.tls.letsencrypt_listen == ":http"
    assert cfg.tls.acme_email == "admin@example.com"
    assert cfg.data_dir == tmp_path / "data"  # the file's data_dir is kept
    assert cfg.derp.server_enabled and cfg.derp.stun_listen_addr == "0.0.0.0:3478"
    assert embedded_region(cfg)["Nodes"][0]["HostName"] == "vpn.example.com"

    # Without --domain the file's values stand; the admin verbs ignore serve's flags.
    plain = _config(build_parser().parse_args(["serve", "-c", str(cfg_path)]))
    assert plain.tls.uses_files and plain.listen_addr == "127.0.0.1:8080"
    assert not _config(build_parser().parse_args(["certs", "-c", str(cfg_path)])).tls.uses_letsencrypt


def test_certs_without_a_server_is_one_line(tmp_path):
    res = run("certs", "-c", str(write_config(tmp_path)))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1


def test_a_key_file_others_can_read_stops_serve(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    key = data / "noise_private.key"
    key.write_text("privkey:" + "11" * 32 + "\n")
    key.chmod(0o644)
    cfg = write_config(tmp_path, listen_addr="127.0.0.1:0", derp={"server": {"enabled": False}})
    res = run("serve", "-c", str(cfg))
    assert res.returncode == 1
    assert "cannot start" in res.stderr and "noise_private.key" in res.stderr and "chmod 600" in res.stderr
