"""``POST /api/v1/backup`` on the admin socket only: an online, consistent copy of the database.

The server makes the copy itself (Store.backup: SQLite's backup API, between two transactions,
checked) in its data directory, then sends the file's bytes; ``trioscale backup FILE`` writes
them where the admin asked, with the admin's ownership. It is not on the public listener: a
backup holds every secret's hash and every node's keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h11
import trio

from ..http.server import Answer
from ..storage import Store
from ..storage.backup import BackupError
from .problem import problem

log = logging.getLogger(__name__)

PATH = b"/api/v1/backup"
CONTENT_TYPE = "application/vnd.sqlite3"


def backup_route(store: Store, workdir: Path):
    """The admin server's plain route for backups; ``workdir`` holds the copy while it is sent."""

    async def route(req: h11.Request, body: bytes) -> Answer | None:
        if req.target.split(b"?", 1)[0].rstrip(b"/") != PATH:
            return None
        if req.method != b"POST":
            return problem(405, "POST only")
        tmp = Path(workdir) / f".backup-{os.getpid()}-{id(req):x}.sqlite"
        try:
            await store.backup(tmp)
            data = await trio.to_thread.run_sync(tmp.read_bytes)
        except (BackupError, OSError) as e:
            log.error("backup failed: %s", e)
            return problem(500, f"backup failed: {e}")
        finally:
            tmp.unlink(missing_ok=True)
        log.info("backup of %d bytes sent", len(data))
        return 200, [("content-type", CONTENT_TYPE)], data

    return route
