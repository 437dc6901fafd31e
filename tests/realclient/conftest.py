import pytest

from .binaries import Unavailable, ensure_client
from .harness import Netns, netns_available


@pytest.fixture(scope="session")
def client_binaries():
    try:
        return ensure_client()
    except Unavailable as e:
        pytest.skip(f"real Tailscale client unavailable: {e}")


@pytest.fixture(scope="module")
def netns():
    why = netns_available()
    if why:
        pytest.skip(why)
    ns = Netns()
    yield ns
    ns.close()
