"""How long a standby takes to become the active server, on a real PostgreSQL.

    python3 -m bench.failover [--rounds 5] [--lease 5] [--json FILE]

Starts a PostgreSQL server for the run (tests/pgserver.py) and two ``trioscale serve``
processes on one database (over its unix socket, DERP off, one user), then ``--rounds`` times,
alternating which server is active:

- SIGKILL the active one: time until the other answers ``GET /health`` with 200 (its session
  closed at once, the standby's next try for the lock wins); the killed one is started again
  and stands by;
- SIGSTOP the active one: time until the other answers 200 (PostgreSQL ends the frozen
  server's session after ``--lease`` seconds); then SIGCONT: time until the resumed one says
  it is a standby (its next renewal fails on its dead session).

Loopback only; every wait has a deadline; everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .control_load import HOST, ServerProcess

DEADLINE = 60.0


def health(server: ServerProcess) -> int | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{server.port}/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_for(fn, what: str) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > DEADLINE:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def run(rounds: int, lease: float) -> dict[str, list[float]]:
    from tests.pgserver import PostgresServer

    pg = PostgresServer()
    work = Path(tempfile.mkdtemp(prefix="trioscale-failover-"))
    out: dict[str, list[float]] = {"active after SIGKILL s": [], "active after SIGSTOP s": [],
                                   "resumed one stands by s": []}
    servers: list[ServerProcess] = []
    try:
        db = pg.new_database()
        database = db.config(socket=True, lease_timeout=f"{lease:g}s")
        for name in ("a", "b"):
            (work / name).mkdir()
            servers.append(ServerProcess(work / name, None, {"database": database}))
        a, b = servers
        a.start()
        a.cli("users", "create", "alice")
        (work / "b" / "data").mkdir(parents=True)
        shutil.copy(work / "a" / "data" / "noise_private.key", work / "b" / "data" / "noise_private.key")
        b.start(ready=("status",))
        active, standby = a, b
        for _ in range(rounds):
            active.proc.send_signal(signal.SIGKILL)
            active.proc.wait()
            out["active after SIGKILL s"].append(wait_for(lambda: health(standby) == 200, "a takeover"))
            active.start(ready=("status",))
            active, standby = standby, active

            active.proc.send_signal(signal.SIGSTOP)
            out["active after SIGSTOP s"].append(wait_for(lambda: health(standby) == 200, "a takeover"))
            active.proc.send_signal(signal.SIGCONT)
            out["resumed one stands by s"].append(wait_for(lambda: health(active) == 503, "the step-down"))
            active, standby = standby, active
    finally:
        for s in servers:
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGCONT)
            s.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lease", type=float, default=5.0, help="database.postgres.lease_timeout, seconds")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    res = run(args.rounds, args.lease)
    for what, values in res.items():
        print(f"{what:28} min {min(values):6.2f}  median {statistics.median(values):6.2f}  max {max(values):6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
