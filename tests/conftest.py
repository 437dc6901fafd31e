"""Suite-wide rules.

In CI (CI=true) a test that would skip fails instead: every real component the tests need (the
official client, pebble, PostgreSQL, Chromium, ...) is installed by the fixtures, so a skip there
means something is missing, and a skip must never turn a run green.
"""

from __future__ import annotations

import logging
import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"


@pytest.fixture(autouse=True)
def _logging_levels_restored():
    """The CLI's main(), run in-process by some tests, sets logger levels as a process entry
    point does (e.g. quiets appliance.config); restore them so no test sees another's levels."""
    manager = logging.Logger.manager
    before = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root = logging.root.level
    yield
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and lg.level != before.get(name, logging.NOTSET):
            lg.setLevel(before.get(name, logging.NOTSET))
    logging.root.setLevel(root)
