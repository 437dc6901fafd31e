"""Memory of pending interactive logins (issue 10: "10,000 of them cost under 50 MB").

Starts a real ``trioscale serve`` on 127.0.0.1 and sends it interactive registrations (no key)
over Noise + HTTP/2 with our protocol client, each with a large Hostinfo, from many loopback
source addresses (127.1.x.y: the server allows 32 waiting logins per source). A person's login
is started first and must still be waiting at the end. The server's RSS (from /proc) is read
at start, after the flood, and after a second flood of Hostinfos near the 1 MiB body limit.

    python -m bench.pending_logins [--logins 10000] [--hostinfo-kb 64] [--big 100] [--big-kb 600] [--rounds 2]

Bounded: at most 20,000 logins, 256 at a time, loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
import yaml

from appliance.adminclient import AdminClient
from appliance.control.authrequests import MAX_PER_SOURCE
from bench.controlclient import ControlClientError, SimClient, fetch_server_key

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def hostinfo(name: str, kb: int) -> dict:
    # Services entries are ~75 bytes of JSON each; a Hostinfo the client could really send.
    n = kb * 1024 // 75
    return {"Hostname": name, "OS": "linux", "OSVersion": "bench", "IPNVersion": "1.96.4",
            "Services": [{"Proto": "tcp", "Port": i % 65536, "Description": "d" * 40} for i in range(n)]}


def source(i: int) -> str:
    slot = i // MAX_PER_SOURCE
    return f"127.1.{slot // 250 + 1}.{slot % 250 + 1}"


async def flood(port: int, public: bytes, count: int, kb: int, offset: int, concurrency: int) -> float:
    body = hostinfo("flood", kb)
    limiter = trio.CapacityLimiter(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        async with limiter:
            async with trio.open_nursery() as nursery:
                c = SimClient(HOST, port, public, f"f{i}", local_address=source(offset + i))
                try:
                    with trio.fail_after(60):
                        await c.connect(nursery)
                        doc = await c.login(hostinfo={**body, "Hostname": f"f{i}"})
                    if not doc.get("AuthURL"):
                        failures += 1
                except (ControlClientError, OSError, trio.BrokenResourceError, trio.TooSlowError):
                    failures += 1
                finally:
                    await c.aclose()
                    nursery.cancel_scope.cancel()

    start = time.monotonic()
    async with trio.open_nursery() as n:
        for i in range(count):
            n.start_soon(one, i)
    if failures:
        print(f"  {failures} logins got no AuthURL")
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--logins", type=int, default=10_000)
    ap.add_argument("--hostinfo-kb", type=int, default=64)
    ap.add_argument("--big", type=int, default=100)
    ap.add_argument("--big-kb", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of --big logins after the table is full")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    if not 0 < args.logins + args.big * args.rounds <= 20_000 or not 0 < args.concurrency <= 256:
        raise SystemExit("at most 20,000 logins, 256 at a time")

    with tempfile.TemporaryDirectory() as tmp:
        port = 19700
        cfg = {
            "server_url": f"http://{HOST}:{port}", "listen_addr": f"{HOST}:{port}",
            "data_dir": f"{tmp}/data", "unix_socket": f"{tmp}/data/trioscale.sock",
            "dns": {"base_domain": "ts.test", "override_local_dns": False},
            "derp": {"server": {"enabled": False}}, "log": {"level": "warn"},
        }
        Path(tmp, "config.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "-c", f"{tmp}/config.yaml"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        admin = AdminClient(Path(tmp, "data", "trioscale.sock"))
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    admin.call("GET", "/api/v1/version")
                    break
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.2)
            public = trio.run(fetch_server_key, HOST, port)

            async def person() -> None:
                async with trio.open_nursery() as nursery:
                    c = SimClient(HOST, port, public, "person", local_address="127.0.0.1")
                    await c.connect(nursery)
                    await c.login()
                    await c.aclose()
                    nursery.cancel_scope.cancel()

            trio.run(person)
            person_id = admin.call("GET", "/api/v1/auth")["authRequests"][0]["authId"]
            base = rss_mb(proc.pid)
            print(f"server RSS at start: {base:.1f} MB")
            # The person's login and the flood together fill the table exactly.
            took = trio.run(flood, port, public, args.logins - 1, args.hostinfo_kb, 0, args.concurrency)
            waiting = admin.call("GET", "/api/v1/auth")["authRequests"]
            after = rss_mb(proc.pid)
            print(f"{args.logins} logins with {args.hostinfo_kb} KiB Hostinfo from "
                  f"{(args.logins + MAX_PER_SOURCE - 1) // MAX_PER_SOURCE} sources in {took:.1f} s: "
                  f"{len(waiting)} waiting, RSS {after:.1f} MB (+{after - base:.1f} MB, "
                  f"{(after - base) * 1024 / max(1, len(waiting)):.2f} KiB each)")
            # A full table refuses these; what they cost is the parsing of their bodies, which
            # the allocator keeps for the next ones: a second round must not add to it.
            big = after
            for round_ in range(1, args.rounds + 1):
                took = trio.run(flood, port, public, args.big, args.big_kb, args.logins + round_ * args.big,
                                min(args.concurrency, 16))
                waiting = admin.call("GET", "/api/v1/auth")["authRequests"]
                prev, big = big, rss_mb(proc.pid)
                print(f"then {args.big} more logins with {args.big_kb} KiB Hostinfo (round {round_}) in {took:.1f} s: "
                      f"{len(waiting)} waiting, RSS {big:.1f} MB (+{big - prev:.1f} MB)")
            ok = any(r["authId"] == person_id for r in waiting)
            print(f"the person's login started before the floods is {'still waiting' if ok else 'GONE'}")
            print(json.dumps({"base_mb": round(base, 1), "after_flood_mb": round(after, 1),
                              "after_big_mb": round(big, 1), "waiting": len(waiting), "person_kept": ok}))
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
