"""How much each fuzz test runs.

CI (the default): a fixed number of examples from a fixed seed (derandomize), a few seconds per
test, the same inputs on every run so a failure reproduces. By hand, for the long runs recorded
in bench/README.md: ``TRIOSCALE_FUZZ_EXAMPLES=20000 python3 -m pytest tests/fuzz``, random seeds.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("TRIOSCALE_FUZZ_EXAMPLES", "0"))

fuzz = settings(
    max_examples=EXAMPLES or 200,
    derandomize=not EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    # One server per test serves every example; large inputs are the point here.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def scaled(n: int) -> int:
    """``n`` examples in CI, the hand-run count (or more) otherwise: for the slower drivers."""
    return max(n, EXAMPLES)
