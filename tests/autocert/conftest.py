from __future__ import annotations

from collections.abc import Iterator

import pytest

from .pebble import Pebble, run_pebble


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One pebble for the session, issuing certificates with its default (long) lifetime."""
    with run_pebble(tmp_path_factory.mktemp("pebble")) as p:
        yield p
