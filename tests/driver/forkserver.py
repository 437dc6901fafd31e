"""Start `trioscale serve` processes fast, for tests that kill servers hundreds of times.

    python -m tests.driver.forkserver CONFIG LOG

imports everything `serve` needs once, then reads commands on stdin, one per line, and answers
each with one line on stdout:

- ``start`` → ``<pid>``: fork a child that runs ``trioscale serve -c CONFIG`` (its output
  appended to LOG). A fresh interpreter would spend most of a second importing; a fork of this
  one starts serving in about a tenth of that. Nothing here has started a thread or a Trio run
  yet, so the child is a clean server process.
- ``wait <pid>`` → ``<exit status>`` (negative: killed by that signal).
"""

from __future__ import annotations

import os
import sys

import appliance.cli  # noqa: F401  (imported for the children)
import appliance.serve  # noqa: F401


def main(config: str, log: str) -> None:
    for line in sys.stdin:
        cmd = line.split()
        if cmd == ["start"]:
            pid = os.fork()
            if pid == 0:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                os.close(0)
                code = 70
                try:
                    code = appliance.cli.main(["serve", "-c", config])
                finally:
                    os._exit(code)
            print(pid, flush=True)
        elif len(cmd) == 2 and cmd[0] == "wait":
            _, status = os.waitpid(int(cmd[1]), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
        else:
            print("?", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
